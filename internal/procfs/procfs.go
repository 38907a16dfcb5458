// Package procfs is kptune's one reader of /proc: processes, their threads, CPU time, user IDs,
// memory mappings and executables.
//
// stat, status and cmdline are parsed by github.com/prometheus/procfs, which reads each file in one
// bounded read (1 MiB) and keeps up with the kernel's formats; what it does not cover is here: the
// mappings with their residency (smaps, read line by line with a bound on their number, since
// prometheus/procfs's ProcMaps reads every line and skips residency), the executable's identity, and
// the status fields it does not parse (TracerPid, CapEff).
//
// kptune reads a target's executable through /proc/PID/exe, never by its path: from a container with
// hostPID the path names a file of another mount namespace, and a replaced binary on disk is not the
// one running. A process is identified by its PID and its start time (field 22 of
// /proc/PID/stat, in clock ticks since boot), so a PID reused by a new process is told apart.
package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	prom "github.com/prometheus/procfs"
)

// Root is where procfs is mounted; tests and containers may point it elsewhere.
var Root = "/proc"

// The conditions callers act on.
var (
	// ErrGone: the process no longer exists.
	ErrGone = errors.New("process no longer exists")
	// ErrPermission: kptune may not read or stop it.
	ErrPermission = errors.New("permission denied: run as root or with CAP_SYS_PTRACE")
)

// Process is one process of the host.
type Process struct {
	PID       int
	StartTime uint64 // clock ticks since boot
	State     byte   // R, S, D, t (traced), T (stopped), Z …, as read
	Comm      string
	Cmdline   []string
}

// Exe is the path through which the process's executable can be read.
func (p Process) Exe() string { return filepath.Join(Root, strconv.Itoa(p.PID), "exe") }

// fsError says what a failed read of process pid's files means.
func fsError(pid int, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH):
		return fmt.Errorf("pid %d: %w", pid, ErrGone)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("pid %d: %w", pid, ErrPermission)
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

// proc opens process pid, or its thread tid for tid > 0, under Root.
func proc(pid, tid int) (prom.Proc, error) {
	fs, err := prom.NewFS(Root)
	if err != nil {
		return prom.Proc{}, err
	}
	var p prom.Proc
	if tid > 0 {
		p, err = fs.Thread(pid, tid)
	} else {
		p, err = fs.Proc(pid)
	}
	if err != nil {
		return prom.Proc{}, fsError(pid, err)
	}
	return p, nil
}

// stat reads /proc/PID/stat, or /proc/PID/task/TID/stat for tid > 0.
func stat(pid, tid int) (prom.Proc, prom.ProcStat, error) {
	p, err := proc(pid, tid)
	if err != nil {
		return p, prom.ProcStat{}, err
	}
	s, err := p.Stat()
	if err != nil {
		return p, prom.ProcStat{}, fsError(pid, err)
	}
	if s.State == "" {
		return p, prom.ProcStat{}, fmt.Errorf("pid %d: stat without a state", pid)
	}
	return p, s, nil
}

// Get reads one process.
func Get(pid int) (Process, error) {
	pp, s, err := stat(pid, 0)
	if err != nil {
		return Process{}, err
	}
	p := Process{PID: pid, StartTime: s.Starttime, State: s.State[0], Comm: s.Comm}
	if cmd, err := pp.CmdLine(); err == nil && len(cmd) > 0 {
		p.Cmdline = cmd
	}
	return p, nil
}

// ThreadState is the state of thread tid of process pid (R, S, t, T …), or 0 if it cannot be read.
func ThreadState(pid, tid int) byte {
	_, s, err := stat(pid, tid)
	if err != nil {
		return 0
	}
	return s.State[0]
}

// Threads lists the threads of process pid (/proc/PID/task), in ascending order.
func Threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(TaskPath(pid, 0, "task"))
	if err != nil {
		return nil, fsError(pid, err)
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	if len(tids) == 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	slices.Sort(tids)
	return tids, nil
}

// TaskPath is the path of a file of process pid (/proc/PID/name), or of its thread tid for tid > 0
// (/proc/PID/task/TID/name).
func TaskPath(pid, tid int, name string) string {
	if tid > 0 {
		return filepath.Join(Root, strconv.Itoa(pid), "task", strconv.Itoa(tid), name)
	}
	return filepath.Join(Root, strconv.Itoa(pid), name)
}

// Alive reports whether process pid still exists and is the one that started at start.
func Alive(pid int, start uint64) bool {
	_, s, err := stat(pid, 0)
	return err == nil && s.Starttime == start
}

// StatusField reads one field of a status file (/proc/PID/status, /proc/PID/task/TID/status, or
// /proc/self/status), its value trimmed: for the fields prometheus/procfs does not parse.
func StatusField(path, key string) (string, error) {
	b, err := readBounded(path, maxStatus)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s has no %s", path, key)
}

// maxStatus bounds what is read of a status file (a few kB).
const maxStatus = 64 << 10

// readBounded reads a file of at most limit bytes; a longer one is an error, not read in part (a
// line cut at the bound would read as a different value).
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return b, nil
}

// UIDs returns the real and effective user IDs of process pid (/proc/PID/status).
func UIDs(pid int) (real, effective uint32, err error) {
	p, err := proc(pid, 0)
	if err != nil {
		return 0, 0, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, 0, fsError(pid, err)
	}
	if st.UIDs[0] > 1<<32-1 || st.UIDs[1] > 1<<32-1 {
		return 0, 0, fmt.Errorf("pid %d: malformed Uid line", pid)
	}
	return uint32(st.UIDs[0]), uint32(st.UIDs[1]), nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat (USER_HZ, 100 on every Linux architecture
// Go supports).
const userHZ = 100

// CPU returns the CPU time process pid has used, with that of its children it has waited for
// (utime + stime + cutime + cstime): for kube-proxy, its own and its iptables-restore or nft runs'.
func CPU(pid int) (time.Duration, error) {
	_, s, err := stat(pid, 0)
	if err != nil {
		return 0, err
	}
	if s.CUTime < 0 || s.CSTime < 0 {
		return 0, fmt.Errorf("pid %d: negative children's CPU time", pid)
	}
	ticks := uint64(s.UTime) + uint64(s.STime) + uint64(s.CUTime) + uint64(s.CSTime)
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// OwnCPU returns the CPU time process pid has used itself (utime + stime), its children's left out.
func OwnCPU(pid int) (time.Duration, error) {
	_, s, err := stat(pid, 0)
	if err != nil {
		return 0, err
	}
	return time.Duration(uint64(s.UTime)+uint64(s.STime)) * time.Second / userHZ, nil
}

// List returns every process whose stat is readable.
func List() ([]Process, error) {
	ents, err := os.ReadDir(Root)
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if p, err := Get(pid); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// Mapping is one mapping of /proc/PID/smaps.
type Mapping struct {
	Start, End uint64
	Perms      string // "rw-p"
	Offset     uint64
	Inode      uint64
	Path       string // "" for anonymous memory
	// Untouched: nothing of it is resident or swapped out (Rss and Swap are 0), so it holds only
	// zeros and need not be read.
	Untouched bool
}

// maxMappings bounds what is read of a process's mappings (Linux's default vm.max_map_count is
// 65530; a kube-proxy has a few hundred).
const maxMappings = 1 << 17

// Maps reads the memory mappings of a process, from smaps: as maps, with how much of each is in
// memory.
func Maps(pid int) ([]Mapping, error) {
	f, err := os.Open(filepath.Join(Root, strconv.Itoa(pid), "smaps"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mapping
	var used uint64 // the current mapping's Rss + Swap, in kB
	sawRss := false
	done := func() {
		if len(out) > 0 {
			out[len(out)-1].Untouched = sawRss && used == 0
		}
		used, sawRss = 0, false
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if strings.HasSuffix(fs[0], ":") { // an attribute of the mapping above: "Rss:  12 kB"
			if (fs[0] == "Rss:" || fs[0] == "Swap:") && len(fs) >= 2 {
				sawRss = sawRss || fs[0] == "Rss:"
				if v, err := strconv.ParseUint(fs[1], 10, 64); err == nil {
					used += v
				} else {
					used++ // unreadable: count it as used, so that the mapping is read
				}
			}
			continue
		}
		if len(fs) < 5 {
			continue
		}
		done()
		if len(out) == maxMappings {
			return nil, fmt.Errorf("pid %d: more than %d memory mappings: not a process kptune reads", pid, maxMappings)
		}
		var m Mapping
		se := strings.SplitN(fs[0], "-", 2)
		if len(se) != 2 {
			return nil, fmt.Errorf("pid %d: malformed maps line %q", pid, sc.Text())
		}
		m.Start, err = strconv.ParseUint(se[0], 16, 64)
		if err == nil {
			m.End, err = strconv.ParseUint(se[1], 16, 64)
		}
		if err == nil {
			m.Offset, err = strconv.ParseUint(fs[2], 16, 64)
		}
		if err == nil {
			m.Inode, err = strconv.ParseUint(fs[4], 10, 64)
		}
		if err != nil || m.End < m.Start {
			return nil, fmt.Errorf("pid %d: malformed maps line %q", pid, sc.Text())
		}
		m.Perms = fs[1]
		if len(fs) >= 6 {
			m.Path = strings.Join(fs[5:], " ")
		}
		out = append(out, m)
	}
	done()
	if len(out) == 0 {
		return nil, fmt.Errorf("pid %d: no memory mappings (a kernel thread, or the process has exited)", pid)
	}
	return out, sc.Err()
}

// ExeID returns the device and inode of a process's executable: an exec keeps the PID and the start
// time, but not these.
func ExeID(pid int) (dev, ino uint64, err error) {
	var st syscall.Stat_t
	err = syscall.Stat(filepath.Join(Root, strconv.Itoa(pid), "exe"), &st)
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return 0, 0, fmt.Errorf("pid %d: cannot read its executable: %w", pid, ErrPermission)
	case err != nil:
		return 0, 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	return st.Dev, st.Ino, nil
}
