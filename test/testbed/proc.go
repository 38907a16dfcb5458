package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"kptune/internal/procfs"
)

// stateDir holds one JSON file a test bed: what to kill and delete if its owner dies.
const stateDir = "/run/kptune-testbed"

// state is what Down needs to clean up, written before anything is started.
type state struct {
	ID         string   `json:"id"`
	Dir        string   `json:"dir"`
	KeepDir    bool     `json:"keepDir"`
	PIDs       []int    `json:"pids"`
	Namespaces []string `json:"namespaces"`
	// A node's: the cgroup its pods run under, and its containerd's socket, whose shims outlive it.
	Cgroups []string `json:"cgroups,omitempty"`
	Sockets []string `json:"sockets,omitempty"`
}

func (s *state) file() string { return filepath.Join(stateDir, s.ID+".json") }

func (s *state) save() error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(s.file(), b, 0o600)
}

// cleanup kills the recorded processes, deletes the namespaces and the state file.
func (s *state) cleanup() error {
	var errs []error
	for i := len(s.PIDs) - 1; i >= 0; i-- {
		killWait(s.PIDs[i], 10*time.Second)
	}
	for _, sock := range s.Sockets {
		killShims(sock)
	}
	for _, cg := range s.Cgroups {
		if err := removeCgroup(cg); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Dir != "" && (len(s.Sockets) > 0 || len(s.Cgroups) > 0) {
		if err := unmountUnder(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(s.Namespaces) - 1; i >= 0; i-- {
		if err := delNetns(s.Namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if !s.KeepDir && s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(s.file()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CleanupAll tears down every test bed recorded under /run/kptune-testbed, for test/cluster/down.sh
// and for tests that start after a killed one.
func CleanupAll() error {
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(stateDir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var s state
		if err := json.Unmarshal(b, &s); err != nil || s.ID == "" {
			errs = append(errs, fmt.Errorf("%s: not a test bed state file; remove it by hand", e.Name()))
			continue
		}
		errs = append(errs, s.cleanup())
	}
	return errors.Join(errs...)
}

// killWait sends SIGTERM to a process group leader and its group, then SIGKILL after grace.
func killWait(pid int, grace time.Duration) {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	p, err := procfs.Get(pid)
	return err == nil && p.State != 'Z'
}

// proc is a process of the test bed, started inside a network namespace.
//
// Nothing waits on it while it runs: a wait4 blocked on a child in this process would also take the
// ptrace-stop reports meant for kptune's tracer thread when a test retunes that child. Its exit is
// seen in /proc (a zombie), and it is reaped when stopped or found dead.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	reaped sync.Once
	err    error
}

// start runs bin inside network namespace ns (through `ip netns exec`, which also gives it the
// namespace's own /sys), with its output in logPath. Unless detach is set, the process dies with
// its parent.
func start(name, ns, logPath string, detach bool, env []string, bin string, args ...string) (*proc, error) {
	return launch(name, append([]string{"ip", "netns", "exec", ns, bin}, args...), logPath, detach, env)
}

// startHostSys is start through nsenter, which enters the network namespace only: the program sees
// this machine's /sys, and with it the cgroup hierarchies (`ip netns exec` mounts the namespace's
// own sysfs over /sys, where containerd, runc and the kubelet find no cgroup mount).
func startHostSys(name, ns, logPath string, detach bool, env []string, bin string, args ...string) (*proc, error) {
	return launch(name, append([]string{"nsenter", "--net=/run/netns/" + ns, "--", bin}, args...), logPath, detach, env)
}

func launch(name string, argv []string, logPath string, detach bool, env []string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{name: name, cmd: cmd, log: logPath}, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	if alive(p.pid()) {
		return false
	}
	p.reap()
	return true
}

func (p *proc) reap() { p.reaped.Do(func() { p.err = p.cmd.Wait() }) }

func (p *proc) stop() {
	if p == nil {
		return
	}
	killWait(p.pid(), 10*time.Second)
	if !alive(p.pid()) {
		p.reap()
	}
}

// failed describes why a process is not up: its exit status and the end of its log.
func (p *proc) failed(what string) error {
	status := "is still running"
	if p.exited() {
		status = fmt.Sprintf("exited (%v)", p.err)
	}
	return fmt.Errorf("%s: %s %s; last log lines (%s):\n%s", what, p.name, status, p.log, tail(p.log, 8))
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tailOf(b, n)
}

// waitFor polls cond every 250 ms until it returns true, the process exits, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *proc, what string, cond func(context.Context) bool) error {
	return waitEvery(ctx, timeout, 250*time.Millisecond, p, what, cond)
}

// waitEvery is waitFor polling every interval.
func waitEvery(ctx context.Context, timeout, every time.Duration, p *proc, what string, cond func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if cond(ctx) {
			return nil
		}
		if p != nil && p.exited() {
			return p.failed(what)
		}
		select {
		case <-ctx.Done():
			if p != nil {
				return p.failed(what + ": timed out")
			}
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// ip runs an iproute2 command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs a command inside a namespace and returns its output.
func inNetns(ns string, name string, args ...string) ([]byte, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), ns, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return out, fmt.Errorf("%s in %s: %w", name, ns, err)
	}
	return out, nil
}

func addNetns(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	return ip("-n", name, "link", "set", "lo", "up")
}

func delNetns(name string) error {
	if _, err := os.Stat("/run/netns/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return ip("netns", "del", name)
}
