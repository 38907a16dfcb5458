// Package tune is `kptune set` and `kptune reset`: it takes the process's write lock, locates its
// runners, applies the safety rails, records the original values, and has patch apply the change
// inside one short stop, with one audit line a runner.
package tune

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/state"
	"kptune/internal/target"
)

// Options configure Set and Reset.
type Options struct {
	PID    int    // 0: every kube-proxy on the node
	Runner string // "" or "all": every runner; else one runner's address
	Change patch.Change
	DryRun bool
	// Force overrides the /healthz rail, and writes with a built-in layout that kube-proxy's values
	// could not confirm.
	Force bool
	Store state.Store
	// Pause, if set, is called at each step of a write: "locked", "located", "recorded", then inside
	// the stop "checked" and "written", then "released" (fault-injection tests kill kptune there).
	Pause  func(step string)
	Log    *slog.Logger
	Locate target.LocateOptions // how runners are found (zero: the scan, else the uprobe)
	// Target, for its PID, is a kube-proxy the caller holds located (the agent keeps each one): its
	// runners are read again (no scan) and the change planned from what they hold now; inside the
	// stop each is checked once more, so a stale one is refused, never written. It stays the
	// caller's to close.
	Target *target.Process
}

// Result is what set and reset report.
type Result struct {
	Processes []ProcessResult `json:"processes"`
}

// ProcessResult is the outcome for one kube-proxy.
type ProcessResult struct {
	PID        int            `json:"pid"`
	K8sVersion string         `json:"k8sVersion"`
	Generation string         `json:"generation"`
	Locator    string         `json:"locator"`
	DryRun     bool           `json:"dryRun,omitempty"`
	Runners    []RunnerResult `json:"runners"`
	Threads    int            `json:"threadsStopped,omitempty"`
	Stopped    string         `json:"stoppedFor,omitempty"`
	StoppedNS  int64          `json:"stoppedNanoseconds,omitempty"`
	// The stop's parts: until every thread had stopped, and the checks and writes inside it.
	StoppingNS int64 `json:"stoppingNanoseconds,omitempty"`
	InsideNS   int64 `json:"insideNanoseconds,omitempty"`
	// StopCPUNS is what the stop cost kptune in CPU (its tracing thread's).
	StopCPUNS int64    `json:"stopCPUNanoseconds,omitempty"`
	Total     string   `json:"total"`
	Notes     []string `json:"notes,omitempty"`
	// Error is why nothing was written to this process, when several were asked for.
	Error string `json:"error,omitempty"`
}

// RunnerResult is one runner's change.
type RunnerResult struct {
	Address string       `json:"address"`
	Old     patch.Values `json:"old"`
	New     patch.Values `json:"new"`
	Fields  []string     `json:"fieldsWritten"`
}

func (o Options) pause(step string) {
	if o.Pause != nil {
		o.Pause(step)
	}
}

// Set changes the runners of one or every kube-proxy.
func Set(ctx context.Context, o Options) (Result, error) {
	return each(ctx, o, target.Discover, set)
}

// Reset restores the values kube-proxy started with, from the state record of its first change.
func Reset(ctx context.Context, o Options) (Result, error) {
	return each(ctx, o, target.Discover, reset)
}

// each runs fn on o.PID, or on every kube-proxy discover lists.
func each(ctx context.Context, o Options, discover func() ([]procfs.Process, error), fn func(context.Context, Options, int) (ProcessResult, error)) (Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if n, err := o.Store.Clean(); err == nil && n > 0 {
		o.Log.Info("removed state records of processes that no longer exist", "count", n)
	}
	if o.PID != 0 {
		pr, err := fn(ctx, o, o.PID)
		if err != nil {
			return Result{}, err
		}
		return Result{Processes: []ProcessResult{pr}}, nil
	}
	procs, err := discover()
	if err != nil {
		return Result{}, err
	}
	if len(procs) == 0 {
		return Result{}, errors.New("no kube-proxy process on this node: pass --pid, or run as root to see every process")
	}
	// Every kube-proxy is tried, whatever happened to those before it: each gets its result, and
	// the call fails if any failed.
	var res Result
	var failed []string
	for _, p := range procs {
		var pr ProcessResult
		var ferr error
		err := target.Safely(p.PID, func() { pr, ferr = fn(ctx, o, p.PID) })
		if err == nil {
			err = ferr
		}
		if err != nil {
			pr.PID, pr.Error = p.PID, err.Error()
			failed = append(failed, err.Error())
		}
		res.Processes = append(res.Processes, pr)
	}
	if len(failed) > 0 {
		return res, fmt.Errorf("%d of %d kube-proxies not changed: %s", len(failed), len(procs), strings.Join(failed, "; "))
	}
	return res, nil
}

// prepared is a locked, located process.
type prepared struct {
	t      *target.Process
	found  []locate.Found // its runners, read just now
	unlock func()
	kept   bool // t is the caller's (Options.Target)
}

func (p *prepared) close() {
	if !p.kept {
		p.t.Close()
	}
	p.unlock()
}

func prepare(ctx context.Context, o Options, pid int, lock bool) (*prepared, error) {
	p := &prepared{unlock: func() {}}
	if lock {
		unlock, err := o.Store.Lock(pid)
		if err != nil {
			return nil, err
		}
		p.unlock = unlock
		o.pause("locked")
	}
	if t := o.Target; t != nil && t.PID == pid {
		p.t, p.kept = t, true
		if dev, ino, err := procfs.ExeID(pid); err != nil {
			p.close()
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		} else if dev != t.ExeDev || ino != t.ExeIno {
			p.close()
			return nil, fmt.Errorf("pid %d runs another executable than the one located: nothing written; it is located again: %w", pid, target.ErrStale)
		}
		found, err := t.Revalidate()
		if err != nil {
			p.close()
			return nil, fmt.Errorf("nothing written: %w", err)
		}
		p.found = found
		return p, nil
	}
	t, err := target.Open(ctx, pid)
	if err != nil {
		p.unlock()
		return nil, err
	}
	p.t = t
	if err := t.Locate(ctx, o.Locate); err != nil {
		p.close()
		return nil, err
	}
	p.found = t.Runners()
	return p, nil
}

func selectRunners(found []locate.Found, which string) ([]locate.Found, error) {
	if which == "" || which == "all" {
		return found, nil
	}
	addr, err := strconv.ParseUint(which, 0, 64)
	if err != nil {
		return nil, fmt.Errorf("--runner %q: give a runner address from kptune inspect (0x…) or all", which)
	}
	for _, f := range found {
		if f.Address == addr {
			return []locate.Found{f}, nil
		}
	}
	return nil, fmt.Errorf("no runner at %s in this process: see kptune inspect", which)
}

// begin locks (unless a dry run) and locates process pid, and starts its result.
func begin(ctx context.Context, o Options, pid int) (*prepared, ProcessResult, error) {
	p, err := prepare(ctx, o, pid, !o.DryRun)
	if err != nil {
		return nil, ProcessResult{}, err
	}
	l := p.t.Layout()
	by := p.t.FoundBy()
	if p.kept {
		by = "kept"
	}
	res := ProcessResult{PID: pid, K8sVersion: p.t.K8sVersion(), Generation: string(l.Generation), Locator: by, DryRun: o.DryRun}
	if err := confirmed(l, o.Force); err != nil {
		p.close()
		return nil, res, fmt.Errorf("pid %d: %w", pid, err)
	}
	return p, res, nil
}

func set(ctx context.Context, o Options, pid int) (ProcessResult, error) {
	start := time.Now()
	p, res, err := begin(ctx, o, pid)
	if err != nil {
		return res, err
	}
	defer p.close()
	l := p.t.Layout()
	runners, err := selectRunners(p.found, o.Runner)
	if err != nil {
		return res, err
	}
	var rws target.Plan
	health := newProbe(p.t)
	for _, f := range runners {
		v, ws, err := patch.Plan(f, l, o.Change)
		if err != nil {
			return res, fmt.Errorf("pid %d: %w", pid, err)
		}
		if err := res.rail(health, f, v, o.Force); err != nil {
			return res, fmt.Errorf("pid %d: %w", pid, err)
		}
		rws = addRunner(&res, rws, f, v, ws)
	}
	if o.DryRun || len(rws) == 0 {
		res.Total = time.Since(start).String()
		return res, nil
	}
	o.pause("located")
	if err := remember(o.Store, p); err != nil {
		return res, err
	}
	o.pause("recorded")
	if err := apply(ctx, o, p, &res, rws, "set"); err != nil {
		return res, err
	}
	res.Total = time.Since(start).String()
	return res, nil
}

// addRunner adds a runner's planned change to the result, and to the writes if it has any.
func addRunner(res *ProcessResult, rws target.Plan, f locate.Found, v patch.Values, ws []patch.Write) target.Plan {
	rr := RunnerResult{Address: fmt.Sprintf("%#x", f.Address), Old: patch.ValuesOf(f), New: v, Fields: fieldNames(ws)}
	res.Runners = append(res.Runners, rr)
	if len(ws) == 0 {
		return rws
	}
	return append(rws, patch.RunnerWrites{Found: f, Writes: ws})
}

// fieldNames names the fields of writes.
func fieldNames(ws []patch.Write) []string {
	out := []string{}
	for _, w := range ws {
		out = append(out, w.Field)
	}
	return out
}

// confirmed refuses a built-in layout that kube-proxy's values could not confirm (its /configz
// unreadable, say), unless forced: every other check holds, but the offsets themselves are a guess.
func confirmed(l layout.Layout, force bool) error {
	if l.Unconfirmed == "" || force {
		return nil
	}
	return fmt.Errorf("%w: the runner's layout is kptune's built-in table, which kube-proxy's own values could not confirm (%s): nothing written; use --force to write with it anyway",
		patch.ErrRefused, l.Unconfirmed)
}

// apply writes inside one stop of the process. The audit log gets each runner's change before the
// stop (nothing is written if it cannot), and its result after.
func apply(ctx context.Context, o Options, p *prepared, res *ProcessResult, rws target.Plan, action string) error {
	pid := p.t.PID
	if err := o.Store.Audit(auditEntries(action, "intent", pid, res.Runners, 0, nil)...); err != nil {
		return fmt.Errorf("pid %d: write the audit log in %s: %w: nothing written (use --state-dir)", pid, o.Store.Dir, err)
	}
	applied, err := p.t.Apply(ctx, rws, o.Pause)
	st := applied.Stats
	if applied.Busy > 0 && err == nil {
		o.Log.Info(action+": a stop found a thread inside a rate limiter and wrote nothing; written at a later one",
			"pid", pid, "stops", applied.Busy+1)
	}
	for i, ws := range applied.Written {
		for j := range res.Runners {
			if res.Runners[j].Address == fmt.Sprintf("%#x", rws[i].Found.Address) {
				res.Runners[j].Fields = fieldNames(ws)
			}
		}
	}
	res.Threads, res.Stopped, res.StoppedNS = st.Threads, st.Stopped.String(), int64(st.Stopped)
	res.StoppingNS, res.InsideNS, res.StopCPUNS = int64(st.Stopping), int64(st.Inside), int64(st.CPU)
	phase := "done"
	if err != nil {
		phase = "failed"
	}
	results := auditEntries(action, phase, pid, res.Runners, st.Stopped, err)
	if aerr := o.Store.Audit(results...); aerr != nil {
		o.Log.Warn("audit log: the result of a change not recorded (its intent was)", "pid", pid, "error", aerr)
	}
	if errors.Is(err, target.ErrGone) {
		return fmt.Errorf("pid %d exited before the write: nothing written; run kptune again for the new kube-proxy: %w", pid, err)
	}
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	o.pause("released")
	for _, e := range results {
		o.Log.Info(action, "uid", e.UID, "pid", e.PID, "runner", e.Runner, "old", e.Old, "new", e.New, "stopped", st.Stopped)
	}
	return nil
}

// remember saves the original values before the first change of a process.
func remember(s state.Store, p *prepared) error {
	t := p.t
	r, err := s.Load(t.PID, t.StartTime, t.Binary().BuildID())
	if err != nil || r != nil {
		return err
	}
	r = &state.Record{PID: t.PID, StartTime: t.StartTime, BuildID: t.Binary().BuildID(), Runners: map[string]state.Original{}}
	for _, f := range p.found {
		r.Runners[fmt.Sprintf("%#x", f.Address)] = state.Original{MinInterval: f.MinInterval, MaxInterval: f.MaxInterval, RetryInterval: f.RetryInterval, Burst: f.Burst}
	}
	if err := s.Save(r); err != nil {
		return fmt.Errorf("record the original values in %s: %w (use --state-dir): nothing written", s.Dir, err)
	}
	return nil
}

func reset(ctx context.Context, o Options, pid int) (ProcessResult, error) {
	start := time.Now()
	p, res, err := begin(ctx, o, pid)
	if err != nil {
		return res, err
	}
	defer p.close()
	l := p.t.Layout()
	rec, err := o.Store.Load(pid, p.t.StartTime, p.t.Binary().BuildID())
	if err != nil {
		return res, err
	}
	if rec == nil {
		return res, fmt.Errorf("nothing to reset for pid %d: kptune has not changed it since it started", pid)
	}
	var rws target.Plan
	health := newProbe(p.t)
	for _, f := range p.found {
		orig, ok := rec.Runners[fmt.Sprintf("%#x", f.Address)]
		if !ok {
			return res, fmt.Errorf("pid %d: runner %#x has no recorded original: nothing written", pid, f.Address)
		}
		c := patch.Change{MinInterval: &orig.MinInterval}
		if l.Generation == layout.Runner {
			c.RetryInterval, c.MaxInterval = &orig.RetryInterval, &orig.MaxInterval
		} else {
			c.Burst = &orig.Burst
		}
		v, ws, err := patch.Plan(f, l, c)
		if err != nil {
			return res, fmt.Errorf("pid %d: %w", pid, err)
		}
		// A record is input like any other: what it restores passes the rails a set would.
		if err := res.rail(health, f, v, o.Force); err != nil {
			return res, fmt.Errorf("pid %d: the recorded original: %w", pid, err)
		}
		rws = addRunner(&res, rws, f, v, ws)
	}
	if o.DryRun {
		res.Total = time.Since(start).String()
		return res, nil
	}
	if len(rws) > 0 {
		if err := apply(ctx, o, p, &res, rws, "reset"); err != nil {
			return res, err
		}
	}
	if err := o.Store.Remove(pid, p.t.StartTime); err != nil {
		return res, err
	}
	res.Total = time.Since(start).String()
	return res, nil
}

// auditEntries are the audit lines of a change, one a runner written to.
func auditEntries(action, phase string, pid int, rs []RunnerResult, stopped time.Duration, err error) []state.AuditEntry {
	uid := os.Getuid()
	name := ""
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		name = u.Username
	}
	var out []state.AuditEntry
	for _, r := range rs {
		if len(r.Fields) == 0 {
			continue
		}
		e := state.AuditEntry{Time: time.Now().UTC(), Action: action, Phase: phase, UID: uid, User: name, PID: pid, Runner: r.Address,
			Old: describe(r.Old), New: describe(r.New)}
		if phase != "intent" {
			e.StopFor = stopped.String()
		}
		if err != nil {
			e.Error = err.Error()
		}
		out = append(out, e)
	}
	return out
}

func describe(v patch.Values) string {
	s := "minInterval=" + v.MinInterval.String()
	if v.RetryInterval != 0 {
		s += " retryInterval=" + v.RetryInterval.String() + " maxInterval=" + v.MaxInterval.String()
	}
	if v.QPS != 0 {
		s += fmt.Sprintf(" qps=%g limit=%g burst=%d", v.QPS, v.Limit, v.Burst)
	}
	return s
}
