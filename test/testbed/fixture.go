package testbed

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Fixtures: small programs holding a real runner of each generation (test/fixtures).
const (
	AsyncRunner = "asyncrunner" // k8s.io/kubernetes/pkg/util/async, k8s 1.20–1.33
	ProxyRunner = "proxyrunner" // k8s.io/kubernetes/pkg/proxy/runner, k8s 1.34+
)

// Fixture builds (or finds in the cache) fixture name against b's k8s version and flavour.
func (b Build) Fixture(ctx context.Context, name string) (string, error) {
	paths, err := runScript(ctx, "test/kubeproxy/build.sh", append(b.args(), "--fixture", name)...)
	if err != nil {
		return "", err
	}
	return paths[len(paths)-1], nil
}

// FixtureProcess is a running fixture.
type FixtureProcess struct {
	PID int
	cmd *exec.Cmd

	mu   sync.Mutex
	runs []time.Time
	done chan struct{}
}

// StartFixture runs a fixture binary with args and waits until its runner loops. The process dies
// with the caller.
func StartFixture(ctx context.Context, bin string, args ...string) (*FixtureProcess, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fixture %s: %w", bin, err)
	}
	f := &FixtureProcess{PID: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			switch {
			case len(fields) > 0 && fields[0] == "ready":
				close(ready)
			case len(fields) == 3 && fields[0] == "run":
				ns, _ := strconv.ParseInt(fields[2], 10, 64)
				f.mu.Lock()
				f.runs = append(f.runs, time.Unix(0, ns))
				f.mu.Unlock()
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case <-ready:
		return f, nil
	case <-f.done:
		return nil, fmt.Errorf("fixture %s exited before its runner looped", bin)
	case <-ctx.Done():
		f.Stop()
		return nil, ctx.Err()
	case <-time.After(10 * time.Second):
		f.Stop()
		return nil, fmt.Errorf("fixture %s did not report ready in 10s", bin)
	}
}

// Runs returns the start times of the work function's runs so far.
func (f *FixtureProcess) Runs() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.runs...)
}

// Stop ends the fixture.
func (f *FixtureProcess) Stop() {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.done
	}
}
