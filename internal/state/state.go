// Package state keeps what kptune must remember about the processes it changed: the original values
// of each runner (for reset), a lock a process (one writer at a time), and the audit log.
//
// Records live in DIR/records/PID-STARTTIME.json, mode 0600: keyed by start time as well as PID, so
// a record never applies to a new process that reuses the PID; the build ID inside is checked too.
// The audit log DIR/audit.log gets two JSON lines a write: its intent before, its result after.
//
// The directory is trusted only if it could not have been prepared by someone else: DIR and its
// subdirectories must be real directories (not symbolic links), owned by root or by kptune's own
// user, and writable by no one else. Files are opened without following a symbolic link, new ones
// created under fresh names (O_EXCL) and renamed into place, and what is read is bounded.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// ErrUnsafe is wrapped by the refusal of a state directory or file someone else could have prepared.
var ErrUnsafe = errors.New("unsafe state directory")

// ensure creates DIR/sub (0700) where it is missing, and checks DIR and DIR/sub.
func (s Store) ensure(sub string) error {
	if err := os.MkdirAll(filepath.Join(s.Dir, sub), 0o700); err != nil {
		return err
	}
	return s.check(sub)
}

// check checks DIR and, unless sub is "", DIR/sub (checkDir); an error wraps os.ErrNotExist where
// one of them does not exist.
func (s Store) check(sub string) error {
	if err := checkDir(s.Dir); err != nil || sub == "" {
		return err
	}
	return checkDir(filepath.Join(s.Dir, sub))
}

// checkDir refuses a directory that is a symbolic link, is owned by another user than root or
// kptune's, or is writable by its group or others: whoever could write there could plant the
// records reset writes back, or links kptune would write through.
func checkDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%w: %s is a symbolic link: give the real directory with --state-dir", ErrUnsafe, dir)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafe, dir)
	case !ok || (st.Uid != 0 && int(st.Uid) != os.Geteuid()):
		return fmt.Errorf("%w: %s is owned by uid %d, not root: chown root %s", ErrUnsafe, dir, st.Uid, dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%w: %s is writable by others (mode %v): chmod go-w %s", ErrUnsafe, dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// maxRecord bounds a record read back (a few hundred bytes for two runners).
const maxRecord = 64 << 10

// openFile opens path without following a symbolic link, and checks it is a regular file.
func openFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symbolic link: remove it", ErrUnsafe, path)
	} else if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file: remove it", ErrUnsafe, path)
	}
	return f, nil
}

// Load returns the record of a process, or nil if there is none. A record that does not parse, or
// whose build ID differs, is an error: it is not applied.
func (s Store) Load(pid int, start uint64, buildID string) (*Record, error) {
	if err := s.check("records"); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	f, err := openFile(s.recordPath(pid, start), os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRecord+1))
	f.Close()
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecord {
		return nil, fmt.Errorf("state record %s is larger than %d KiB: remove it", s.recordPath(pid, start), maxRecord>>10)
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
			if d < 0 || d > MaxPeriod {
				return fmt.Errorf("runner %s: period %v", addr, d)
			}
		}
		if o.MaxInterval < o.MinInterval || o.Burst < 0 || o.Burst > 1<<20 {
			return fmt.Errorf("runner %s: min %v, max %v, burst %d", addr, o.MinInterval, o.MaxInterval, o.Burst)
		}
	}
	return nil
}

// MaxPeriod bounds a period in a record: kube-proxy's runners start with at most an hour
// (maxInterval) or its syncPeriod, which no one sets to days.
const MaxPeriod = 24 * time.Hour

// Save writes a record atomically with mode 0600: to a new file of a fresh name, then renamed over
// the record's name (a rename replaces a link planted there, and follows none).
func (s Store) Save(r *Record) error {
	if err := s.ensure("records"); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Join(s.Dir, "records"), ".record-*")
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), s.recordPath(r.PID, r.StartTime)); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// Remove deletes a process's record.
func (s Store) Remove(pid int, start uint64) error {
	err := os.Remove(s.recordPath(pid, start))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Clean removes the records of processes that no longer exist (or whose PID was reused), and their
// lock files, and returns how many records it removed.
func (s Store) Clean() (int, error) {
	if err := s.check("records"); errors.Is(err, os.ErrNotExist) {
		return 0, s.cleanLocks()
	} else if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir(filepath.Join(s.Dir, "records"))
	if err != nil {
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
	return n, s.cleanLocks()
}

// cleanLocks removes the lock files of processes that no longer exist, each only while holding its
// lock (Lock checks that the file it locked is still the one at its path).
func (s Store) cleanLocks() error {
	if err := s.check("locks"); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(s.Dir, "locks"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".lock"))
		if err != nil || !strings.HasSuffix(e.Name(), ".lock") {
			continue
		}
		if _, err := procfs.Get(pid); err == nil {
			continue
		}
		path := filepath.Join(s.Dir, "locks", e.Name())
		f, err := openFile(path, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			_ = os.Remove(path)
		}
		f.Close()
	}
	return nil
}

// Lock takes the write lock of a process; it fails at once if another kptune holds it. The lock
// is released by the returned function, or by the kernel when kptune exits.
func (s Store) Lock(pid int) (func(), error) {
	if err := s.ensure("locks"); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (use --state-dir)", s.Dir, err)
	}
	f, err := openFile(filepath.Join(s.Dir, "locks", strconv.Itoa(pid)+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
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
	// Clean may have removed the file between the open and the lock: then this lock guards nothing.
	var held, now syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &held) != nil || syscall.Lstat(f.Name(), &now) != nil || held.Ino != now.Ino || held.Dev != now.Dev {
		f.Close()
		return nil, fmt.Errorf("the lock file of pid %d was removed meanwhile (its process had exited): try again", pid)
	}
	return func() { f.Close() }, nil
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	Time   time.Time `json:"time"`
	Action string    `json:"action"` // set, reset
	// Phase is "intent" (written before the stop: a change is never made unaudited), then "done"
	// or "failed" (with Error).
	Phase   string `json:"phase"`
	UID     int    `json:"uid"`
	User    string `json:"user,omitempty"`
	PID     int    `json:"pid"`
	Runner  string `json:"runner"`
	Old     string `json:"old"`
	New     string `json:"new"`
	StopFor string `json:"stoppedFor,omitempty"`
	Error   string `json:"error,omitempty"`
}

// maxAudit bounds the audit log: past it, audit.log becomes audit.log.1 (replacing the one before)
// and a new one starts, so the log takes at most twice this.
var maxAudit int64 = 16 << 20

// Audit appends entries to the audit log (0600), in one write.
func (s Store) Audit(es ...AuditEntry) error {
	if err := s.ensure(""); err != nil {
		return err
	}
	var b []byte
	for _, e := range es {
		line, err := json.Marshal(e)
		if err != nil {
			return err
		}
		b = append(append(b, line...), '\n')
	}
	path := filepath.Join(s.Dir, "audit.log")
	f, err := openFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err == nil && fi.Size()+int64(len(b)) > maxAudit && fi.Size() > 0 {
		f.Close()
		if err := os.Rename(path, path+".1"); err != nil {
			return fmt.Errorf("rotate the audit log: %w", err)
		}
		if f, err = openFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return err
		}
	}
	_, werr := f.Write(b)
	return errors.Join(werr, f.Close())
}
