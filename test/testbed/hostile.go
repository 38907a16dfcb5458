package testbed

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
)

// Hostile fakes of test/hostile/kube-proxy, by their build tags.
const (
	// FakeKubeProxy names kube-proxy's main package and nothing else.
	FakeKubeProxy = ""
	// FakeWithClientGo also links a k8s.io/client-go (a stub), so that it passes for a kube-proxy
	// by its build information.
	FakeWithClientGo = "clientgo"
	// FakeHugeRunner passes for a kube-proxy, and declares a runner type of 2^49 bytes.
	FakeHugeRunner = "clientgo,hugerunner"
)

var hostile = struct {
	mu    sync.Mutex
	paths map[string]string
}{paths: map[string]string{}}

// Hostile builds (once per process) the fake kube-proxy with the given build tags and returns its
// path, a file named kube-proxy that anyone may run (tests run it as other users too).
func Hostile(tags string) (string, error) {
	if short() {
		return "", fmt.Errorf("build the hostile kube-proxy: %w", ErrShort)
	}
	hostile.mu.Lock()
	defer hostile.mu.Unlock()
	if p, ok := hostile.paths[tags]; ok {
		return p, nil
	}
	src := filepath.Join(RepoRoot(), "test", "hostile", "kube-proxy")
	// Cached by the source's and the tags' hash, beside kptune's own test builds.
	h := sha256.New()
	fmt.Fprintln(h, tags, runtime.Version())
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		fmt.Fprintln(h, path, len(b))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), "kptune-bin", "hostile-"+hex.EncodeToString(h.Sum(nil)[:8]))
	out := filepath.Join(dir, "kube-proxy")
	if _, err := os.Stat(out); err != nil {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return "", err
		}
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			return "", err
		}
		work, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(work)
		if err := os.Chmod(work, 0o755); err != nil {
			return "", err
		}
		cmd := exec.Command("go", "build", "-tags", tags, "-o", filepath.Join(work, "kube-proxy"), "./cmd/kube-proxy")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod", "GOWORK=off")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build the fake kube-proxy (tags %q): %v: %s", tags, err, strings.TrimSpace(string(b)))
		}
		// A rename of the whole directory: another test process may build the same at once.
		if err := os.Rename(work, dir); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			return "", err
		}
	}
	hostile.paths[tags] = out
	return out, nil
}

// HostileProcess is a running fake.
type HostileProcess struct {
	PID int
	cmd *exec.Cmd
}

// StartHostile runs the fake built with tags as user uid (0: root), with its args, and waits until
// it is ready. It dies with the caller.
func StartHostile(tags string, uid int, args ...string) (*HostileProcess, error) {
	bin, err := Hostile(tags)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the fake kube-proxy: %w", err)
	}
	line := make([]byte, 64)
	if n, err := out.Read(line); err != nil || !strings.HasPrefix(string(line[:n]), "ready") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("the fake kube-proxy did not start: %v %s", err, stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return &HostileProcess{PID: cmd.Process.Pid, cmd: cmd}, nil
}

// Stop kills the fake.
func (h *HostileProcess) Stop() {
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
}
