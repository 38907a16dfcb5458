package target

import (
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strings"

	"kptune/internal/gobin"
	"kptune/internal/kpmetrics"
	"kptune/internal/procfs"
)

// KubeProxyMain is the main package path of every kube-proxy build.
const KubeProxyMain = "k8s.io/kubernetes/cmd/kube-proxy"

// What makes a process a kube-proxy, checked before anything costly is read of it, because any
// process of the node can be looked at and none is trusted:
//   - it runs as root (real and effective uid 0, as kube-proxy's DaemonSet runs it);
//   - its executable is a regular file of at most gobin.MaxExecutable bytes, an ELF Go program;
//   - its build information names k8s.io/kubernetes/cmd/kube-proxy as the main package, and
//     k8s.io/client-go among the modules it was built with.
//
// The checks keep the work spent on other processes small; they are not what makes a write safe:
// a process that passes them still has every size and offset of its binary bounded, and every
// runner validated, before anything is written.

// notKubeProxy is a refusal that says what the process is instead.
type notKubeProxy struct{ is string }

func (e notKubeProxy) Error() string        { return e.is + ", not a kube-proxy" }
func (e notKubeProxy) Is(target error) bool { return target == ErrNotKubeProxy }

// Vet checks the build information of a kube-proxy candidate.
func Vet(bi *buildinfo.BuildInfo) error {
	if bi.Path != KubeProxyMain {
		return notKubeProxy{"the Go program " + bi.Path}
	}
	for _, d := range bi.Deps {
		if d.Path == "k8s.io/client-go" {
			return nil
		}
	}
	return notKubeProxy{"a program with kube-proxy's main package built without k8s.io/client-go (every kube-proxy links it)"}
}

// suspect wraps err with ErrSuspect, keeping err's message.
type suspect struct{ error }

func (s suspect) Unwrap() []error { return []error{s.error, ErrSuspect} }

// identify checks that process p is a kube-proxy and opens its executable, with a one-line error
// that says what to do otherwise.
func identify(p procfs.Process) (*gobin.Binary, error) {
	pid := p.PID
	named := p.Comm == "kube-proxy"
	refuse := func(claims bool, err error) (*gobin.Binary, error) {
		if claims || named {
			err = suspect{err}
		}
		return nil, err
	}
	if ruid, euid, err := procfs.UIDs(pid); err != nil {
		return nil, fmt.Errorf("pid %d (%s): %w", pid, p.Comm, err)
	} else if ruid != 0 || euid != 0 {
		return refuse(false, fmt.Errorf("pid %d (%s) runs as uid %d (effective %d), %w: kube-proxy runs as root; pick a kube-proxy PID", pid, p.Comm, ruid, euid, ErrNotKubeProxy))
	}
	claims := false // its build information names kube-proxy's main package
	b, err := gobin.OpenVetted(p.Exe(), func(bi *buildinfo.BuildInfo) error {
		claims = bi.Path == KubeProxyMain
		return Vet(bi)
	})
	var nk notKubeProxy
	switch {
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("pid %d: cannot read its executable: %w", pid, ErrPermission)
	case errors.Is(err, gobin.ErrNotGo):
		return refuse(false, fmt.Errorf("pid %d (%s) is not a Go program, so %w: pick a kube-proxy PID", pid, p.Comm, ErrNotKubeProxy))
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("pid %d (%s) has no readable executable (a kernel thread, or it exited): pick a kube-proxy PID", pid, p.Comm)
	case errors.As(err, &nk):
		return refuse(claims, fmt.Errorf("pid %d (%s) is %w: pick a kube-proxy PID", pid, p.Comm, nk))
	case err != nil:
		return refuse(claims, fmt.Errorf("pid %d (%s): %w", pid, p.Comm, err))
	}
	return b, nil
}

// Candidates lists the processes of the host worth opening as a kube-proxy: every one but kptune
// itself and kernel threads.
func Candidates() ([]procfs.Process, error) {
	procs, err := procfs.List()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	out := procs[:0]
	for _, p := range procs {
		if p.PID != self && len(p.Cmdline) > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}

// Discover returns the kube-proxy processes of the host. Processes that are not kube-proxies, or
// that vanish while being read, are passed over.
func Discover() ([]procfs.Process, error) {
	procs, err := Candidates()
	if err != nil {
		return nil, err
	}
	var out []procfs.Process
	for _, p := range procs {
		if b, err := identify(p); err == nil {
			b.Close()
			out = append(out, p)
		}
	}
	return out, nil
}

// Safely runs fn, the work on process pid outside any stop of it, and turns a panic into a
// *PanicError. Inside a stop nothing is recovered: a panic there ends kptune, and the kernel
// releases the process.
func Safely(pid int, fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{PID: pid, Value: r, Stack: debug.Stack()}
		}
	}()
	fn()
	return nil
}

// PanicError is a panic recovered while reading a process: a defect, since every size read is
// bounded. Its message is one line; Stack is where it happened.
type PanicError struct {
	PID   int
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("pid %d: kptune failed reading it (%v): nothing written; please report this with the output of kptune version", e.PID, e.Value)
}

// gitVersionRE is what k8s release builds inject as gitVersion: v1.33.5, v1.34.0-rc.1, v1.33.5+k3s1.
var gitVersionRE = regexp.MustCompile(`^v1\.[0-9]{1,2}\.[0-9]{1,3}([-+][0-9A-Za-z.+-]{1,40})?$`)

// K8sVersion is the version injected at link time (-X k8s.io/component-base/version.gitVersion=…):
// from the build settings where they recorded -ldflags (not under -trimpath, which releases use), else
// from the one string variable of the binary that looks like a release version, else the
// k8s.io/kubernetes module version.
func K8sVersion(b *gobin.Binary) string {
	for _, s := range b.Build.Settings {
		if s.Key != "-ldflags" {
			continue
		}
		for _, f := range strings.Fields(s.Value) {
			if v, ok := strings.CutPrefix(f, "k8s.io/component-base/version.gitVersion="); ok {
				return v
			}
		}
	}
	if vs := b.StringVars(6, 60, gitVersionRE.MatchString); len(vs) == 1 {
		return vs[0]
	}
	if b.Build.Main.Path == "k8s.io/kubernetes" && b.Build.Main.Version != "(devel)" {
		return b.Build.Main.Version
	}
	for _, d := range b.Build.Deps {
		if d.Path == "k8s.io/kubernetes" {
			return d.Version
		}
	}
	return "unknown"
}

// proxyMode reads --proxy-mode from the command line; "" when it comes from a config file.
func proxyMode(args []string) string {
	v, _ := kpmetrics.FlagValue(args, "--proxy-mode")
	return v
}
