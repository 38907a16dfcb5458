package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// RepoRoot returns the root of the kptune checkout this package was compiled from.
func RepoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("testbed: no caller information")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build names one kube-proxy build: a k8s version and a flavour.
type Build struct {
	Version string // v1.33.5
	PIE     bool
	CGO     bool
	Debug   bool   // unstripped, with DWARF
	Go      string // another toolchain (go1.22.12) or the path of a go binary; "" is the default Go
}

func (b Build) String() string {
	s := b.Version
	for _, f := range []struct {
		on   bool
		name string
	}{{b.PIE, "pie"}, {b.CGO, "cgo"}, {b.Debug, "debug"}} {
		if f.on {
			s += "+" + f.name
		}
	}
	if b.Go != "" {
		s += "+" + filepath.Base(b.Go)
	}
	return s
}

func (b Build) args() []string {
	args := []string{b.Version}
	if b.PIE {
		args = append(args, "--pie")
	}
	if b.CGO {
		args = append(args, "--cgo")
	}
	if b.Debug {
		args = append(args, "--debug")
	}
	if b.Go != "" {
		args = append(args, "--go", b.Go)
	}
	return args
}

// KubeProxy builds (or finds in the cache) the kube-proxy binary and returns its path.
func (b Build) KubeProxy(ctx context.Context) (string, error) {
	paths, err := runScript(ctx, "test/kubeproxy/build.sh", b.args()...)
	if err != nil {
		return "", err
	}
	return paths[len(paths)-1], nil
}

// ControlPlane builds (or finds in the cache) etcd and kube-apiserver and returns their paths.
func ControlPlane(ctx context.Context) (etcd, apiserver string, err error) {
	paths, err := runScript(ctx, "test/cluster/build.sh")
	if err != nil {
		return "", "", err
	}
	if len(paths) != 2 {
		return "", "", fmt.Errorf("test/cluster/build.sh printed %d paths, want etcd and kube-apiserver", len(paths))
	}
	return paths[0], paths[1], nil
}

// runScript runs a build script of the repository, passing its progress to stderr, and returns the
// paths it printed.
func runScript(ctx context.Context, script string, args ...string) ([]string, error) {
	if short() {
		return nil, fmt.Errorf("%s %s: %w", script, strings.Join(args, " "), ErrShort)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(RepoRoot(), script), args...)
	cmd.Stdout = &out
	var errBuf bytes.Buffer
	cmd.Stderr = &prefixWriter{w: os.Stderr, buf: &errBuf}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errBuf.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("%s %s: %w: %s", script, strings.Join(args, " "), err, msg)
	}
	paths := strings.Fields(out.String())
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s printed no path", script)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: %w", script, err)
		}
	}
	return paths, nil
}

// prefixWriter passes a script's progress lines through and keeps them for the error message.
type prefixWriter struct {
	w   *os.File
	buf *bytes.Buffer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf.Write(b)
	return p.w.Write(b)
}

var kptune struct {
	once sync.Once
	path string
	err  error
}

// Kptune builds the kptune command once per process and returns its path: a file named for its
// content's hash in a directory that anyone may read (tests run it as other users too), so that the
// test processes of a run share one copy of each build rather than each leaving its own behind.
// Builds, and unfinished builds' directories, older than a day are removed.
func Kptune() (string, error) {
	if short() {
		return "", fmt.Errorf("build kptune: %w", ErrShort)
	}
	kptune.once.Do(func() { kptune.path, kptune.err = buildKptune() })
	return kptune.path, kptune.err
}

func buildKptune() (string, error) {
	dir := filepath.Join(os.TempDir(), "kptune-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	out := filepath.Join(work, "kptune")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/kptune")
	cmd.Dir = RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kptune: %v: %s", err, b)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	path := filepath.Join(dir, "kptune-"+hex.EncodeToString(sum[:8]))
	// A rename replaces a copy another process may be running without touching the file it runs.
	if err := os.Rename(out, path); err != nil {
		return "", err
	}
	// Old builds, and the work directories of builds whose process was killed.
	old, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range old {
		if fi, err := os.Stat(f); err == nil && time.Since(fi.ModTime()) > 24*time.Hour {
			os.RemoveAll(f)
		}
	}
	return path, nil
}
