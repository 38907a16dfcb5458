// Package inspect puts discovery, binary analysis and the runner scan together: which kube-proxy
// processes run on this node, what they are built from, and the values each sync runner lives by.
package inspect

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"kptune/internal/gobin"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/procfs"
)

// KubeProxyMain is the main package path of every kube-proxy build.
const KubeProxyMain = "k8s.io/kubernetes/cmd/kube-proxy"

// Report is what `kptune inspect -o json` prints.
type Report struct {
	Processes []Process `json:"processes"`
}

// Process is one kube-proxy.
type Process struct {
	PID          int      `json:"pid"`
	StartTime    uint64   `json:"startTime"`
	Exe          string   `json:"exe"`
	BuildID      string   `json:"buildID"`
	K8sVersion   string   `json:"k8sVersion"`
	GoVersion    string   `json:"goVersion"`
	ProxyMode    string   `json:"proxyMode"`
	Generation   string   `json:"generation"`
	LayoutSource string   `json:"layoutSource"`
	Runners      []Runner `json:"runners"`
	Error        string   `json:"error,omitempty"`
	found        []locate.Found
}

// Runner is one sync runner.
type Runner struct {
	Address       string   `json:"address"`
	MinInterval   string   `json:"minInterval"`
	MaxInterval   string   `json:"maxInterval"`
	RetryInterval string   `json:"retryInterval,omitempty"`
	QPS           *float32 `json:"qps,omitempty"`
	Limit         *float64 `json:"limit,omitempty"`
	Burst         *int64   `json:"burst,omitempty"`
	Patchable     bool     `json:"patchable"`
	Reason        string   `json:"reason,omitempty"`
}

// IsKubeProxy reports whether an executable is a kube-proxy, from its build information (renamed
// binaries are found), else its name.
func IsKubeProxy(b *gobin.Binary, p procfs.Process) bool {
	if b.Build.Path == KubeProxyMain {
		return true
	}
	return b.Build.Path == "" && p.Comm == "kube-proxy"
}

// Discover returns the kube-proxy processes of the host: every process whose executable's build
// information names kube-proxy. Processes that are not Go programs, or that vanish while being read,
// are passed over.
func Discover() ([]procfs.Process, error) {
	var out []procfs.Process
	err := discover(func(p procfs.Process, _ *gobin.Binary) { out = append(out, p) })
	return out, err
}

// All inspects every kube-proxy process on the host.
func All() (Report, error) {
	var r Report
	err := discover(func(p procfs.Process, b *gobin.Binary) { r.Processes = append(r.Processes, inspect(p, b)) })
	return r, err
}

func discover(fn func(procfs.Process, *gobin.Binary)) error {
	procs, err := procfs.List()
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	for _, p := range procs {
		if p.PID == self || len(p.Cmdline) == 0 {
			continue // kptune itself, and kernel threads
		}
		b, err := gobin.Open(p.Exe())
		if err != nil {
			continue
		}
		if IsKubeProxy(b, p) {
			fn(p, b)
		}
		b.Close()
	}
	return nil
}

// Open opens the executable of process pid and checks that it is a kube-proxy, with a one-line
// error that says what to do otherwise.
func Open(pid int) (procfs.Process, *gobin.Binary, error) {
	p, err := procfs.Get(pid)
	if err != nil {
		if errors.Is(err, procfs.ErrGone) {
			return p, nil, fmt.Errorf("no process %d: check the PID (pgrep kube-proxy)", pid)
		}
		return p, nil, err
	}
	b, err := gobin.Open(p.Exe())
	switch {
	case errors.Is(err, os.ErrPermission):
		return p, nil, fmt.Errorf("pid %d: cannot read its executable: run as root or with CAP_SYS_PTRACE", pid)
	case errors.Is(err, gobin.ErrNotGo):
		return p, nil, fmt.Errorf("pid %d (%s) is not a Go program, so not a kube-proxy: pick a kube-proxy PID", pid, p.Comm)
	case errors.Is(err, os.ErrNotExist):
		return p, nil, fmt.Errorf("pid %d (%s) has no readable executable (a kernel thread, or it exited): pick a kube-proxy PID", pid, p.Comm)
	case err != nil:
		return p, nil, fmt.Errorf("pid %d (%s): %w", pid, p.Comm, err)
	}
	if !IsKubeProxy(b, p) {
		b.Close()
		return p, nil, fmt.Errorf("pid %d (%s) is the Go program %s, not a kube-proxy: pick a kube-proxy PID", pid, p.Comm, b.Build.Path)
	}
	return p, b, nil
}

// PID inspects one process, which must be a kube-proxy.
func PID(pid int) (Process, error) {
	p, b, err := Open(pid)
	if err != nil {
		return Process{}, err
	}
	defer b.Close()
	out := inspect(p, b)
	if out.Error != "" {
		return out, errors.New(out.Error)
	}
	return out, nil
}

func inspect(p procfs.Process, b *gobin.Binary) Process {
	out := Process{
		PID: p.PID, StartTime: p.StartTime, Exe: exePath(p), BuildID: b.BuildID(),
		GoVersion: b.GoVersion, K8sVersion: K8sVersion(b), ProxyMode: proxyMode(p.Cmdline), Runners: []Runner{},
	}
	found, l, err := Locate(p.PID, b)
	out.Generation, out.LayoutSource = string(l.Generation), l.Source
	if err != nil {
		out.Error = fmt.Sprintf("pid %d: %v", p.PID, err)
		return out
	}
	out.found = found
	for _, f := range found {
		out.Runners = append(out.Runners, toRunner(f, l.Generation))
	}
	return out
}

// Target prepares the scan of process pid, whose executable b is: its layout, mappings and load bias.
func Target(pid int, b *gobin.Binary) (locate.Target, error) {
	l, err := locate.LayoutOf(b)
	if err != nil {
		return locate.Target{}, err
	}
	maps, err := procfs.Maps(pid)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	_, ino, err := procfs.ExeID(pid)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	bias, err := locate.LoadBias(b, maps, ino)
	if err != nil {
		return locate.Target{Layout: l}, err
	}
	return locate.Target{Mem: memory.Process{PID: pid}, Maps: maps, Bias: bias, Binary: b, Layout: l}, nil
}

// Locate finds the runners of process pid, whose executable b is.
func Locate(pid int, b *gobin.Binary) ([]locate.Found, locate.Layout, error) {
	t, found, err := LocateTarget(pid, b)
	return found, t.Layout, err
}

// LocateTarget prepares the scan of process pid and finds its runners; at least one, or an error
// that says why there is none.
func LocateTarget(pid int, b *gobin.Binary) (locate.Target, []locate.Found, error) {
	t, err := Target(pid, b)
	if err != nil {
		return t, nil, err
	}
	found, err := locate.Scan(t)
	if err != nil {
		return t, nil, err
	}
	if len(found) == 0 {
		if _, gerr := procfs.Get(pid); gerr != nil {
			return t, nil, fmt.Errorf("the process exited during the scan")
		}
		return t, nil, errors.New("no sync runner found in its memory (kube-proxy may still be starting: its proxier is built after it reaches the API server and finds its Node)")
	}
	return t, found, nil
}

func toRunner(f locate.Found, gen locate.Generation) Runner {
	r := Runner{
		Address: fmt.Sprintf("%#x", f.Address), MinInterval: f.MinInterval.String(), MaxInterval: f.MaxInterval.String(),
		Patchable: f.Patchable, Reason: f.Reason,
	}
	if gen == locate.Runner {
		r.RetryInterval = f.RetryInterval.String()
	} else if f.LimitAddr != 0 {
		qps, limit, burst := f.QPS, f.Limit, f.Burst
		r.QPS, r.Limit, r.Burst = &qps, &limit, &burst
	}
	return r
}

// Found returns the raw scan results behind the report's runners.
func (p Process) Found() []locate.Found { return p.found }

func exePath(p procfs.Process) string {
	if target, err := os.Readlink(p.Exe()); err == nil {
		return target
	}
	return p.Exe()
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
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--proxy-mode="); ok {
			return v
		}
		if a == "--proxy-mode" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
