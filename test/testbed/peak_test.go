package testbed

import (
	"os/exec"
	"runtime"
	"testing"
)

// TestRunPeak: a command's peak RSS is its own, not its parent's. The test holds 256 MiB; sleep
// reads as a few MiB, dd with a 64 MiB buffer as that buffer and a little more (rusage's maxrss
// gives both at least the test's 256 MiB).
func TestRunPeak(t *testing.T) {
	ballast := make([]byte, 256<<20)
	for i := range ballast {
		ballast[i] = 1
	}
	_, small, err := RunPeak(exec.Command("sleep", "0.2"))
	if err != nil {
		t.Fatal(err)
	}
	_, large, err := RunPeak(exec.Command("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=2"))
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(ballast)
	t.Logf("sleep %.1f MiB, dd bs=64M %.1f MiB", float64(small)/(1<<20), float64(large)/(1<<20))
	if small <= 0 || small > 16<<20 {
		t.Errorf("sleep: peak RSS %d bytes", small)
	}
	if large < 64<<20 || large > 100<<20 {
		t.Errorf("dd bs=64M: peak RSS %d bytes", large)
	}
}
