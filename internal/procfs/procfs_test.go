package procfs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	p, err := Get(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.StartTime == 0 || p.Comm == "" || len(p.Cmdline) == 0 {
		t.Errorf("self: %+v", p)
	}
	maps, err := Maps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var sawExe, sawRW bool
	for _, m := range maps {
		sawExe = sawExe || (m.Path == exe && m.Offset == 0 && m.Inode != 0)
		sawRW = sawRW || (m.Perms == "rw-p" && m.End > m.Start)
	}
	if !sawExe || !sawRW {
		t.Errorf("maps of self: executable mapped %v, a private writable mapping %v", sawExe, sawRW)
	}
}

func TestGone(t *testing.T) {
	if _, err := Get(999999999); !errors.Is(err, ErrGone) {
		t.Errorf("Get of a missing pid: %v", err)
	}
	if _, err := Maps(999999999); !errors.Is(err, ErrGone) {
		t.Errorf("Maps of a missing pid: %v", err)
	}
}

func TestCPU(t *testing.T) {
	start, err := CPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	own, err := OwnCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn about 100 ms of CPU in a child and wait for it: the parent's total includes it.
	if err := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done").Run(); err != nil {
		t.Fatal(err)
	}
	end, err := CPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if end-start < 20*time.Millisecond {
		t.Errorf("CPU went from %v to %v after a busy child was waited for", start, end)
	}
	if ownEnd, err := OwnCPU(os.Getpid()); err != nil || ownEnd-own > (end-start)/2 {
		t.Errorf("own CPU went from %v to %v (%v) while the total with the child rose by %v", own, ownEnd, err, end-start)
	}
	if _, err := CPU(999999999); !errors.Is(err, ErrGone) {
		t.Errorf("a missing process: %v", err)
	}
}

// TestStatusFieldBounds: a status file past maxStatus is an error, not read in part (a line cut at
// the bound would read as another value).
func TestStatusFieldBounds(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pad := func(n int) string { return strings.Repeat("Junk:\t0\n", n/8) + strings.Repeat("\n", n%8) }
	field := "TracerPid:\t1234\n"
	if v, err := StatusField(write("fits", pad(maxStatus-len(field))+field), "TracerPid"); err != nil || v != "1234" {
		t.Errorf("a status of exactly %d bytes: %q, %v", maxStatus, v, err)
	}
	// One byte more, and the bound would cut the value to "123".
	if v, err := StatusField(write("over", pad(maxStatus-len(field)+2)+field), "TracerPid"); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a status past %d bytes: %q, %v; want an error naming the bound", maxStatus, v, err)
	}
	if _, err := StatusField(write("none", pad(100)), "TracerPid"); err == nil {
		t.Error("a status without the field: no error")
	}
	if v, err := StatusField("/proc/self/status", "TracerPid"); err != nil || v != "0" {
		t.Errorf("own TracerPid: %q, %v", v, err)
	}
}
