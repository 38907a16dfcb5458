// Package procfs discovers processes and their memory mappings through /proc.
//
// kptune reads a target's executable through /proc/PID/exe, never by its path: from a container with
// hostPID the path names a file of another mount namespace, and a replaced binary on disk is not the
// one running. A process is identified by its PID and its start time (field 22 of
// /proc/PID/stat, in clock ticks since boot), so a PID reused by a new process is told apart.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Root is where procfs is mounted; tests and containers may point it elsewhere.
var Root = "/proc"

// ErrGone is returned when a process no longer exists.
var ErrGone = errors.New("process no longer exists")

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

// Get reads one process.
func Get(pid int) (Process, error) {
	dir := filepath.Join(Root, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if errors.Is(err, os.ErrNotExist) {
		return Process{}, fmt.Errorf("pid %d: %w", pid, ErrGone)
	} else if err != nil {
		return Process{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	p := Process{PID: pid}
	// comm is in parentheses and may hold spaces or parentheses itself: split at the last ')'.
	open, close := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || close < open {
		return Process{}, fmt.Errorf("pid %d: malformed stat", pid)
	}
	p.Comm = string(stat[open+1 : close])
	fields := strings.Fields(string(stat[close+1:]))
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return Process{}, fmt.Errorf("pid %d: short stat", pid)
	}
	p.State = fields[0][0]
	if p.StartTime, err = strconv.ParseUint(fields[19], 10, 64); err != nil {
		return Process{}, fmt.Errorf("pid %d: start time: %w", pid, err)
	}
	if cmd, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		for _, a := range bytes.Split(bytes.TrimRight(cmd, "\x00"), []byte{0}) {
			p.Cmdline = append(p.Cmdline, string(a))
		}
	}
	return p, nil
}

// Alive reports whether process pid still exists and is the one that started at start.
func Alive(pid int, start uint64) bool {
	p, err := Get(pid)
	return err == nil && p.StartTime == start
}

// StatusField reads one field of a status file (/proc/PID/status, /proc/PID/task/TID/status, or
// /proc/self/status), its value trimmed.
func StatusField(path, key string) (string, error) {
	b, err := os.ReadFile(path)
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

// UIDs returns the real and effective user IDs of process pid (/proc/PID/status).
func UIDs(pid int) (real, effective uint32, err error) {
	v, err := StatusField(filepath.Join(Root, strconv.Itoa(pid), "status"), "Uid")
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
	} else if err != nil {
		return 0, 0, err
	}
	fs := strings.Fields(v)
	if len(fs) < 2 {
		return 0, 0, fmt.Errorf("pid %d: malformed Uid line %q", pid, v)
	}
	r, err1 := strconv.ParseUint(fs[0], 10, 32)
	e, err2 := strconv.ParseUint(fs[1], 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("pid %d: malformed Uid line %q", pid, v)
	}
	return uint32(r), uint32(e), nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat (USER_HZ, 100 on every Linux architecture
// Go supports).
const userHZ = 100

// CPU returns the CPU time process pid has used, with that of its children it has waited for
// (utime + stime + cutime + cstime): for kube-proxy, its own and its iptables-restore or nft runs'.
func CPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(filepath.Join(Root, strconv.Itoa(pid), "stat"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
	} else if err != nil {
		return 0, err
	}
	close := bytes.LastIndexByte(stat, ')')
	if close < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat", pid)
	}
	fields := strings.Fields(string(stat[close+1:]))
	if len(fields) < 15 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	var ticks uint64
	for _, f := range fields[11:15] { // fields 14–17: utime, stime, cutime, cstime
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: cpu time: %w", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
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
		return 0, 0, fmt.Errorf("pid %d: cannot read its executable: run as root or with CAP_SYS_PTRACE", pid)
	case err != nil:
		return 0, 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	return st.Dev, st.Ino, nil
}
