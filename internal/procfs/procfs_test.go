package procfs

import (
	"errors"
	"os"
	"os/exec"
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
	if _, err := CPU(999999999); !errors.Is(err, ErrGone) {
		t.Errorf("a missing process: %v", err)
	}
}
