// Package state keeps what kptune must remember about the processes it changed: the original values
// of each runner (for reset), a lock a process (one writer at a time), and the audit log.
//
// Records live in DIR/records/PID-STARTTIME.json, mode 0600: keyed by start time as well as PID, so
// a record never applies to a new process that reuses the PID; the build ID inside is checked too.
// The audit log DIR/audit.log gets one JSON line a write.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kptune/internal/procfs"
)

// DefaultDir is where kptune keeps its state on a node.
const DefaultDir = "/var/lib/kptune"

// Record is the original values of a process's runners, written before its first change.
type Record struct {
	PID       int                 `json:"pid"`
	StartTime uint64              `json:"startTime"`
	BuildID   string              `json:"buildID"`
	Runners   map[string]Original `json:"runners"` // by runner address, "0x…"
}

// Original is a runner's values as the process started with them.
type Original struct {
	MinInterval   time.Duration `json:"minInterval"`
	MaxInterval   time.Duration `json:"maxInterval"`
	RetryInterval time.Duration `json:"retryInterval,omitempty"`
	Burst         int64         `json:"burst,omitempty"`
}

// Store is a state directory.
type Store struct{ Dir string }

func (s Store) recordPath(pid int, start uint64) string {
	return filepath.Join(s.Dir, "records", fmt.Sprintf("%d-%d.json", pid, start))
}

func (s Store) ensure(sub string) error {
	return os.MkdirAll(filepath.Join(s.Dir, sub), 0o700)
}

// Load returns the record of a process, or nil if there is none. A record that does not parse, or
// whose build ID differs, is an error: it is not applied.
func (s Store) Load(pid int, start uint64, buildID string) (*Record, error) {
	b, err := os.ReadFile(s.recordPath(pid, start))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil || r.PID != pid || r.StartTime != start {
		return nil, fmt.Errorf("state record %s is corrupt: remove it (the original values it held are lost; restart kube-proxy to get them back)", s.recordPath(pid, start))
	}
	if r.BuildID != buildID {
		return nil, fmt.Errorf("state record %s belongs to another build of pid %d: remove it", s.recordPath(pid, start), pid)
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("state record %s is corrupt (%v): remove it (the original values it held are lost; restart kube-proxy to get them back)", s.recordPath(pid, start), err)
	}
	return &r, nil
}

// check refuses values no kube-proxy starts with: a record is written back by reset, so it is
// input like any other.
func (r *Record) check() error {
	if len(r.Runners) == 0 {
		return errors.New("no runners")
	}
	for addr, o := range r.Runners {
		if _, err := strconv.ParseUint(strings.TrimPrefix(addr, "0x"), 16, 64); err != nil || !strings.HasPrefix(addr, "0x") {
			return fmt.Errorf("runner address %q", addr)
		}
		for _, d := range []time.Duration{o.MinInterval, o.MaxInterval, o.RetryInterval} {
			if d < 0 || d > 1000*time.Hour {
				return fmt.Errorf("runner %s: period %v", addr, d)
			}
		}
		if o.MaxInterval < o.MinInterval || o.Burst < 0 || o.Burst > 1<<20 {
			return fmt.Errorf("runner %s: min %v, max %v, burst %d", addr, o.MinInterval, o.MaxInterval, o.Burst)
		}
	}
	return nil
}

// Save writes a record atomically with mode 0600.
func (s Store) Save(r *Record) error {
	if err := s.ensure("records"); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	path := s.recordPath(r.PID, r.StartTime)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Remove deletes a process's record.
func (s Store) Remove(pid int, start uint64) error {
	err := os.Remove(s.recordPath(pid, start))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Clean removes the records of processes that no longer exist (or whose PID was reused) and
// returns how many it removed.
func (s Store) Clean() (int, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "records"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		name := strings.TrimSuffix(e.Name(), ".json")
		pidS, startS, ok := strings.Cut(name, "-")
		pid, err1 := strconv.Atoi(pidS)
		start, err2 := strconv.ParseUint(startS, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		if p, err := procfs.Get(pid); err == nil && p.StartTime == start {
			continue
		}
		if os.Remove(filepath.Join(s.Dir, "records", e.Name())) == nil {
			n++
		}
	}
	return n, nil
}

// Lock takes the write lock of a process; it fails at once if another kptune holds it. The lock
// is released by the returned function, or by the kernel when kptune exits.
func (s Store) Lock(pid int) (func(), error) {
	if err := s.ensure("locks"); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (use --state-dir)", s.Dir, err)
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "locks", strconv.Itoa(pid)+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another kptune is writing to pid %d: wait for it and try again", pid)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"` // set, reset
	UID     int       `json:"uid"`
	User    string    `json:"user,omitempty"`
	PID     int       `json:"pid"`
	Runner  string    `json:"runner"`
	Old     string    `json:"old"`
	New     string    `json:"new"`
	StopFor string    `json:"stoppedFor"`
}

// Audit appends one entry to the audit log (0600).
func (s Store) Audit(e AuditEntry) error {
	if err := s.ensure(""); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "audit.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	return err
}
