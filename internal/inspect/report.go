// Package inspect is the report of `kptune inspect`: every kube-proxy of the node (or one), how it
// was built, and the values each of its sync runners lives by, as a table or JSON. It writes
// nothing and stops nothing.
package inspect

import (
	"context"
	"fmt"
	"os"

	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/target"
)

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
	Locator      string   `json:"locator,omitempty"`
	Runners      []Runner `json:"runners"`
	Error        string   `json:"error,omitempty"`
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

// All inspects every kube-proxy process on the host. A panic while reading one (a defect, since
// every size read is bounded) is that process's error, not the end of the report.
func All(ctx context.Context, o target.LocateOptions) (Report, error) {
	procs, err := target.Candidates()
	if err != nil {
		return Report{}, err
	}
	r := Report{Processes: []Process{}}
	for _, p := range procs {
		var out Process
		kubeProxy := false
		if err := target.Safely(p.PID, func() {
			t, err := target.Open(ctx, p.PID)
			if err != nil {
				return // not a kube-proxy, or it exited
			}
			defer t.Close()
			kubeProxy = true
			out, _ = report(ctx, t, o)
		}); err != nil {
			out, kubeProxy = Process{PID: p.PID, StartTime: p.StartTime, Runners: []Runner{}, Error: err.Error()}, true
		}
		if kubeProxy {
			r.Processes = append(r.Processes, out)
		}
	}
	return r, nil
}

// PID inspects one process, which must be a kube-proxy. Once it is known to be one, a failure to
// locate its runners is both the report's Error and the error returned.
func PID(ctx context.Context, pid int, o target.LocateOptions) (Process, error) {
	t, err := target.Open(ctx, pid)
	if err != nil {
		return Process{}, err
	}
	defer t.Close()
	return report(ctx, t, o)
}

// report locates the runners of kube-proxy t and reports them.
func report(ctx context.Context, t *target.Process, o target.LocateOptions) (Process, error) {
	b := t.Binary()
	out := Process{
		PID: t.PID, StartTime: t.StartTime, Exe: exePath(t), BuildID: b.BuildID(),
		GoVersion: b.GoVersion, K8sVersion: t.K8sVersion(), ProxyMode: t.ProxyMode(), Runners: []Runner{},
	}
	err := t.Locate(ctx, o)
	l := t.Layout()
	out.Generation, out.LayoutSource, out.Locator = string(l.Generation), l.Describe(), t.FoundBy()
	if err != nil {
		out.Error = err.Error()
		return out, err
	}
	for _, f := range t.Runners() {
		out.Runners = append(out.Runners, runner(f, l.Generation))
	}
	return out, nil
}

func runner(f locate.Found, gen layout.Generation) Runner {
	r := Runner{
		Address: fmt.Sprintf("%#x", f.Address), MinInterval: f.MinInterval.String(), MaxInterval: f.MaxInterval.String(),
		Patchable: f.Patchable, Reason: f.Reason,
	}
	if gen == layout.Runner {
		r.RetryInterval = f.RetryInterval.String()
	} else if f.LimitAddr != 0 {
		qps, limit, burst := f.QPS, f.Limit, f.Burst
		r.QPS, r.Limit, r.Burst = &qps, &limit, &burst
	}
	return r
}

// exePath is where the executable was when it was started, as the kernel remembers it.
func exePath(t *target.Process) string {
	if p, err := os.Readlink(t.Exe()); err == nil {
		return p
	}
	return t.Exe()
}
