package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kptune/internal/procfs"
)

func TestRecordRoundTrip(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	self, err := procfs.Get(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r := &Record{PID: self.PID, StartTime: self.StartTime, BuildID: "b1",
		Runners: map[string]Original{"0x10": {MinInterval: time.Second, MaxInterval: time.Hour, Burst: 2}}}
	if got, err := s.Load(self.PID, self.StartTime, "b1"); got != nil || err != nil {
		t.Fatalf("load before save: %v %v", got, err)
	}
	if err := s.Save(r); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.recordPath(self.PID, self.StartTime))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v (%v), want 0600", fi.Mode(), err)
	}
	got, err := s.Load(self.PID, self.StartTime, "b1")
	if err != nil || got.Runners["0x10"] != r.Runners["0x10"] {
		t.Fatalf("load: %+v %v", got, err)
	}
	if _, err := s.Load(self.PID, self.StartTime, "other-build"); err == nil || !strings.Contains(err.Error(), "another build") {
		t.Errorf("a record of another build: %v", err)
	}
	// A live process's record survives Clean; a dead one's does not.
	dead := &Record{PID: 999999999, StartTime: 1, BuildID: "x"}
	if err := s.Save(dead); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Clean(); n != 1 || err != nil {
		t.Errorf("clean removed %d (%v), want the dead process's record", n, err)
	}
	if got, _ := s.Load(self.PID, self.StartTime, "b1"); got == nil {
		t.Errorf("clean removed a live process's record")
	}
	if err := os.WriteFile(s.recordPath(self.PID, self.StartTime), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(self.PID, self.StartTime, "b1"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("a corrupt record: %v", err)
	}
	if err := s.Remove(self.PID, self.StartTime); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(self.PID, self.StartTime); err != nil {
		t.Errorf("removing a missing record: %v", err)
	}
}

func TestLockAndAudit(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	unlock, err := s.Lock(42)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock(42); err == nil || !strings.Contains(err.Error(), "another kptune") {
		t.Errorf("second lock: %v", err)
	}
	unlock()
	again, err := s.Lock(42)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
	if err := s.Audit(AuditEntry{Action: "set", PID: 42, Runner: "0x10", Old: "1s", New: "2s"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(s.Dir, "audit.log"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		t.Errorf("audit log %v %v", fi, err)
	}
}
