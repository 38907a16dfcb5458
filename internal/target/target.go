// Package target is one kube-proxy process as kptune holds it: opened and checked as a kube-proxy
// (Open), its sync runners located once (Locate), read again without a scan (Revalidate), and
// written inside one stop of the process (Apply). The CLI holds one for the length of a command,
// the agent one per kube-proxy for as long as that process runs.
package target

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"kptune/internal/freeze"
	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/patch"
	"kptune/internal/procfs"
)

// The conditions callers act on; every error of this package that means one of them wraps it.
var (
	// ErrGone: the process exited (or its PID now names another process).
	ErrGone = procfs.ErrGone
	// ErrPermission: kptune may not read or stop the process (root with CAP_SYS_PTRACE may).
	ErrPermission = procfs.ErrPermission
	// ErrTraced: another tracer (a debugger) holds the process; nothing is stopped or written.
	ErrTraced = freeze.ErrTraced
	// ErrUnpatchable: a runner's values are not what kptune knows how to change.
	ErrUnpatchable = patch.ErrUnpatchable
	// ErrNotKubeProxy: the process is not a kube-proxy.
	ErrNotKubeProxy = errors.New("not a kube-proxy")
	// ErrSuspect is wrapped, besides ErrNotKubeProxy or another reason, by the refusal of a process
	// that looks like a kube-proxy (named kube-proxy, or its build information says so) and fails a
	// check: unlike the many processes that are plainly something else, such a refusal is worth a
	// warning.
	ErrSuspect = errors.New("looks like a kube-proxy")
	// ErrNoRunner: a live kube-proxy without a sync runner yet (it builds them once it reaches the
	// API server).
	ErrNoRunner = errors.New("no sync runner found")
	// ErrStale: a runner no longer holds what it held when it was located or last read; it is to be
	// located again.
	ErrStale = locate.ErrStale
)

// Process is one kube-proxy: the process, the executable it runs, and once located its runners.
type Process struct {
	procfs.Process
	// ExeDev and ExeIno identify the executable Binary was read from: an exec keeps the PID and the
	// start time, not these.
	ExeDev, ExeIno uint64
	bin            *gobin.Binary
	k8s            string

	scan    locate.Target
	runners []locate.Found
	by      string
}

// Open checks that process pid is a kube-proxy and opens its executable, with a one-line error that
// says what to do otherwise. The caller closes it.
func Open(ctx context.Context, pid int) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := procfs.Get(pid)
	if errors.Is(err, procfs.ErrGone) {
		return nil, fmt.Errorf("no process %d: check the PID (pgrep kube-proxy): %w", pid, ErrGone)
	} else if err != nil {
		return nil, err
	}
	return open(p)
}

// open opens process p, read just before.
func open(p procfs.Process) (*Process, error) {
	dev, ino, err := procfs.ExeID(p.PID)
	if err != nil {
		return nil, err
	}
	b, err := identify(p)
	if err != nil {
		return nil, err
	}
	// The executable read must be the one identified before: an exec in between is refused here
	// (and any later one when writing).
	if d, i, err := procfs.ExeID(p.PID); err != nil || d != dev || i != ino {
		b.Close()
		return nil, fmt.Errorf("pid %d exec'd another executable while being read: nothing done; try again", p.PID)
	}
	return &Process{Process: p, ExeDev: dev, ExeIno: ino, bin: b, k8s: K8sVersion(b)}, nil
}

// Close releases the executable.
func (p *Process) Close() {
	if p != nil && p.bin != nil {
		p.bin.Close()
	}
}

// Binary is the executable the process runs.
func (p *Process) Binary() *gobin.Binary { return p.bin }

// K8sVersion is the Kubernetes version it was built as.
func (p *Process) K8sVersion() string { return p.k8s }

// ProxyMode is its --proxy-mode flag ("" when set in its configuration file).
func (p *Process) ProxyMode() string { return proxyMode(p.Cmdline) }

// Located reports whether Locate found its runners.
func (p *Process) Located() bool { return len(p.runners) > 0 }

// Layout is the runner layout the process was located with (zero before Locate).
func (p *Process) Layout() layout.Layout { return p.scan.Layout }

// FoundBy says which locator found the runners: "scan", "uprobe" or "scan+uprobe".
func (p *Process) FoundBy() string { return p.by }

// Runners are the runners as last read (Locate or Revalidate).
func (p *Process) Runners() []locate.Found { return slices.Clone(p.runners) }

// Scan is what the locator reads the process through: its memory, mappings, load bias and layout.
func (p *Process) Scan() locate.Target { return p.scan }

// Locate finds the process's runners with the chosen locator: at least one, or an error that says
// why there is none (ErrNoRunner for a kube-proxy that has none yet). Where the layout is kptune's
// built-in table, the first runner's values must confirm it (or the layout is marked Unconfirmed).
func (p *Process) Locate(ctx context.Context, o LocateOptions) error {
	t, found, by, err := locateBy(ctx, p, o)
	p.scan, p.by = t, by
	if err == nil && len(found) > 0 && t.Layout.Source == layout.BuiltinSource {
		err = confirmBuiltin(ctx, p, found[0])
	}
	if err != nil {
		p.runners = nil
		return fmt.Errorf("pid %d: %w", p.PID, err)
	}
	p.runners = found
	return nil
}

// Revalidate reads every runner again at its address (no scan: a few hundred bytes), checking its
// signature. A runner that no longer validates (the process exited, or its proxier was replaced)
// ends it with ErrStale, and the process is to be located again.
func (p *Process) Revalidate() ([]locate.Found, error) {
	if !p.Located() {
		return nil, fmt.Errorf("pid %d: %w", p.PID, ErrNoRunner)
	}
	fresh := make([]locate.Found, len(p.runners))
	for i, r := range p.runners {
		f, ok := locate.Validate(p.scan, r.Address)
		if !ok {
			p.runners = nil
			if !procfs.Alive(p.PID, p.StartTime) {
				return nil, fmt.Errorf("pid %d: %w", p.PID, ErrGone)
			}
			return nil, fmt.Errorf("pid %d: runner %#x: %w", p.PID, r.Address, ErrStale)
		}
		fresh[i] = f
	}
	p.runners = fresh
	return slices.Clone(fresh), nil
}

// Plan is a change to the process: the writes planned for each runner (patch.Plan) from the values
// it held when read.
type Plan []patch.RunnerWrites

// Apply writes the plan inside one stop of the process, after checking, stopped, that it is the
// same process running the same executable and that every runner still holds the values the plan
// was made from (else nothing is written, ErrStale). pause, if set, is called inside the stop
// ("checked", "written") for fault-injection tests.
func (p *Process) Apply(ctx context.Context, plan Plan, pause func(string)) (patch.Applied, error) {
	if err := ctx.Err(); err != nil {
		return patch.Applied{}, err
	}
	if len(plan) == 0 {
		return patch.Applied{}, nil
	}
	t := patch.Target{PID: p.PID, StartTime: p.StartTime, ExeDev: p.ExeDev, ExeIno: p.ExeIno,
		Locate: p.scan, Mem: memory.Process{PID: p.PID}, Pause: pause}
	st, err := patch.Apply(t, plan)
	if err == nil {
		// What was written is what the runners now hold.
		for _, rw := range plan {
			if f, ok := locate.Validate(p.scan, rw.Found.Address); ok {
				for i := range p.runners {
					if p.runners[i].Address == f.Address {
						p.runners[i] = f
					}
				}
			}
		}
	}
	return st, err
}

// Periods reads the periods kube-proxy configured its proxiers with, from its /configz.
func (p *Process) Periods(ctx context.Context) (locate.Periods, error) {
	return periods(ctx, p.Process)
}

// ReleaseTypes frees what the binary's type descriptors took, once the layout is known.
func (p *Process) ReleaseTypes() { p.bin.ReleaseTypes() }

// Runners opens process pid, locates its runners with the memory scan, and closes it: the values
// alone, as `kptune inspect` reads them.
func Runners(ctx context.Context, pid int) ([]locate.Found, error) {
	p, err := Open(ctx, pid)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	if err := p.Locate(ctx, LocateOptions{Locator: ByScan}); err != nil {
		return nil, err
	}
	return p.Runners(), nil
}
