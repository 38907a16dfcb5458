package state

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/internal/procfs"
	"kptune/test/testbed"
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

// TestCleanRemovesLocks: the lock files of exited processes go with their records (a kube-proxy
// container restarting in a loop gets a new PID each time); a held one and a live process's stay.
func TestCleanRemovesLocks(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	const dead = 999999999
	unlockDead, err := s.Lock(dead)
	if err != nil {
		t.Fatal(err)
	}
	unlockSelf, err := s.Lock(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	unlockSelf()
	lockFile := func(pid int) string { return filepath.Join(s.Dir, "locks", strconv.Itoa(pid)+".lock") }
	if _, err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockFile(dead)); err != nil {
		t.Errorf("a held lock was removed: %v", err)
	}
	unlockDead()
	if _, err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockFile(dead)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock of an exited process is left after Clean: %v", err)
	}
	if _, err := os.Stat(lockFile(os.Getpid())); err != nil {
		t.Errorf("the lock of a live process was removed: %v", err)
	}

}

// TestUnsafeStateDirectory: a state directory someone else could have prepared is refused (it held
// the records reset writes back); a symbolic link planted at a record's or the lock's name is not
// followed; a record is written under a fresh name and renamed.
func TestUnsafeStateDirectory(t *testing.T) {
	testbed.NeedRoot(t, "directories owned by another user")
	rec := &Record{PID: 999999998, StartTime: 1, BuildID: "b", Runners: map[string]Original{"0x10": {MinInterval: time.Second, MaxInterval: time.Hour, Burst: 2}}}
	for _, c := range []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"writable by others", func(dir string) error { return os.Chmod(dir, 0o777) }, "writable by others"},
		{"group-writable records", func(dir string) error {
			return errors.Join(os.Mkdir(filepath.Join(dir, "records"), 0o770), os.Chmod(filepath.Join(dir, "records"), 0o770))
		}, "writable by others"},
		{"owned by a user", func(dir string) error { return os.Chown(dir, 1000, 1000) }, "owned by uid 1000"},
		{"a symbolic link", func(dir string) error {
			real := dir + "-real"
			return errors.Join(os.Mkdir(real, 0o700), os.Remove(dir), os.Symlink(real, dir))
		}, "symbolic link"},
	} {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := c.setup(dir); err != nil {
			t.Fatal(err)
		}
		s := Store{Dir: dir}
		if err := s.Save(rec); err == nil || !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: save: %v, want a refusal saying %q", c.name, err, c.want)
		}
		if c.name == "group-writable records" {
			continue // the locks and the log are elsewhere
		}
		if _, err := s.Lock(1); err == nil || !errors.Is(err, ErrUnsafe) {
			t.Errorf("%s: lock: %v", c.name, err)
		}
		if err := s.Audit(AuditEntry{Action: "set"}); err == nil || !errors.Is(err, ErrUnsafe) {
			t.Errorf("%s: audit: %v", c.name, err)
		}
	}

	// A root-owned 0755 directory (what a hostPath DirectoryOrCreate makes) is fine.
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := Store{Dir: dir}
	if err := s.Save(rec); err != nil {
		t.Fatalf("a root-owned 0755 directory: %v", err)
	}
	// Links planted at the names kptune opens: not followed, and the target is untouched.
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "locks"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "locks", "7.lock")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lock(7); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("lock through a planted link: %v", err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "audit.log")); err != nil {
		t.Fatal(err)
	}
	if err := s.Audit(AuditEntry{Action: "set"}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("audit through a planted link: %v", err)
	}
	recPath := s.recordPath(rec.PID, rec.StartTime)
	if err := os.Remove(recPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, recPath); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(rec.PID, rec.StartTime, "b"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("load through a planted link: %v", err)
	}
	// The old fixed temporary name, planted as a link: Save writes a fresh name and replaces the
	// link at the record's name, leaving the target alone.
	if err := os.Symlink(target, recPath+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(rec); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "untouched" {
		t.Errorf("a planted link's target was written: %q", b)
	}
	if fi, err := os.Lstat(recPath); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the record is not a regular file after save: %v %v", fi, err)
	}
	// A record far larger than any kptune writes is refused unread.
	if err := os.WriteFile(recPath, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(rec.PID, rec.StartTime, "b"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a 1 MiB record: %v", err)
	}
}

// TestAuditRotates: past maxAudit the log moves to audit.log.1 and starts again, so it stays
// bounded; an entry is never split.
func TestAuditRotates(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	old := maxAudit
	maxAudit = 1000
	defer func() { maxAudit = old }()
	for i := 0; i < 40; i++ {
		if err := s.Audit(AuditEntry{Action: "set", Phase: "intent", PID: i, Runner: "0x10"}, AuditEntry{Action: "set", Phase: "done", PID: i, Runner: "0x10"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"audit.log", "audit.log.1"} {
		fi, err := os.Stat(filepath.Join(s.Dir, name))
		if err != nil || fi.Size() > maxAudit || fi.Size() == 0 {
			t.Errorf("%s: %v %v, want at most %d bytes", name, fi, err, maxAudit)
		}
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir, "audit.log"))
	if !strings.Contains(string(b), `"pid":39`) || strings.Count(string(b), "\n")%2 != 0 {
		t.Errorf("the current log lacks the last entries, or splits a change: %s", b)
	}
}
