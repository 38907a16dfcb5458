package testbed

import (
	"os/exec"
	"path/filepath"
	"time"

	prom "github.com/prometheus/procfs"
)

// RunPeak runs cmd to its end and returns its wall time and its peak RSS in bytes: the largest
// VmHWM read from its /proc status every 2 ms once it runs the command's program. The rusage
// maxrss of a child will not do: when it execs, the kernel carries the mm it leaves into its
// maxrss, and a child of a Go program leaves its parent's (os/exec forks with CLONE_VM), so a small
// command run from a large test reads as large as the test.
func RunPeak(cmd *exec.Cmd) (time.Duration, int64, error) {
	name := filepath.Base(cmd.Path)
	if len(name) > 15 {
		name = name[:15] // the kernel's comm
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	done := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		var hwm int64
		p, err := prom.NewProc(cmd.Process.Pid)
		for err == nil {
			if s, err := p.NewStatus(); err == nil && s.Name == name {
				hwm = max(hwm, int64(s.VmHWM))
			}
			select {
			case <-done:
				peak <- hwm
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
		<-done
		peak <- hwm
	}()
	err := cmd.Wait()
	wall := time.Since(start)
	close(done)
	return wall, <-peak, err
}
