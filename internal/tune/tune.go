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
	"slices"
	"strconv"
	"strings"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/inspect"
	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/state"
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
	Locate inspect.LocateOptions // how runners are found (zero: the scan, else the uprobe)
	// Located, for its PID, replaces opening the executable and locating the runners: the agent
	// keeps each kube-proxy located and writes without a second scan.
	Located *Located
}

// Located is a kube-proxy its caller has opened and located, with runners it has just read again
// (locate.Validate). Set and Reset take it as found; inside the stop each runner is checked once
// more against the values the change was planned from, so a stale one is refused, never written.
// Its executable stays the caller's to close.
type Located struct {
	Proc           procfs.Process
	ExeDev, ExeIno uint64 // the executable Bin was read from (procfs.ExeID)
	Bin            *gobin.Binary
	Target         locate.Target
	Runners        []locate.Found
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
	StoppingNS int64    `json:"stoppingNanoseconds,omitempty"`
	InsideNS   int64    `json:"insideNanoseconds,omitempty"`
	Total      string   `json:"total"`
	Notes      []string `json:"notes,omitempty"`
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
func Set(o Options) (Result, error) {
	return each(o, set)
}

// Reset restores the values kube-proxy started with, from the state record of its first change.
func Reset(o Options) (Result, error) {
	return each(o, reset)
}

func each(o Options, fn func(Options, int) (ProcessResult, error)) (Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if n, err := o.Store.Clean(); err == nil && n > 0 {
		o.Log.Info("removed state records of processes that no longer exist", "count", n)
	}
	if o.PID != 0 {
		pr, err := fn(o, o.PID)
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
		err := inspect.Safely(p.PID, func() { pr, ferr = fn(o, p.PID) })
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

// discover lists the node's kube-proxies (replaced in tests).
var discover = inspect.Discover

// prepared is a locked, located process.
type prepared struct {
	proc   procfs.Process
	bin    *gobin.Binary
	target patch.Target
	found  []locate.Found
	by     string // the locator that found them
	unlock func()
	kept   bool // bin is the caller's (Options.Located)
}

func (p *prepared) close() {
	if !p.kept {
		p.bin.Close()
	}
	if p.unlock != nil {
		p.unlock()
	}
}

func prepare(o Options, pid int, lock bool) (*prepared, error) {
	p := &prepared{unlock: func() {}}
	if lock {
		unlock, err := o.Store.Lock(pid)
		if err != nil {
			return nil, err
		}
		p.unlock = unlock
		o.pause("locked")
	}
	dev, ino, err := procfs.ExeID(pid)
	if errors.Is(err, procfs.ErrGone) {
		p.unlock()
		return nil, fmt.Errorf("no process %d: check the PID (pgrep kube-proxy)", pid)
	} else if err != nil {
		p.unlock()
		return nil, err
	}
	if l := o.Located; l != nil && l.Proc.PID == pid {
		if len(l.Runners) == 0 {
			p.unlock()
			return nil, fmt.Errorf("pid %d: no runner located", pid)
		}
		if dev != l.ExeDev || ino != l.ExeIno {
			p.unlock()
			return nil, fmt.Errorf("pid %d runs another executable than the one located: nothing written; it is located again", pid)
		}
		p.proc, p.bin, p.kept, p.found, p.by = l.Proc, l.Bin, true, slices.Clone(l.Runners), "kept"
		p.target = patch.Target{PID: pid, StartTime: l.Proc.StartTime, ExeDev: dev, ExeIno: ino, Locate: l.Target, Pause: o.Pause}
		return p, nil
	}
	proc, bin, err := inspect.Open(pid)
	if err != nil {
		p.unlock()
		return nil, err
	}
	p.proc, p.bin = proc, bin
	lt, found, by, err := inspect.LocateBy(context.Background(), pid, bin, o.Locate)
	p.found, p.by = found, by
	if err != nil {
		p.close()
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.target = patch.Target{PID: pid, StartTime: proc.StartTime, ExeDev: dev, ExeIno: ino, Locate: lt, Pause: o.Pause}
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
func begin(o Options, pid int) (*prepared, ProcessResult, error) {
	p, err := prepare(o, pid, !o.DryRun)
	if err != nil {
		return nil, ProcessResult{}, err
	}
	l := p.target.Locate.Layout
	res := ProcessResult{PID: pid, K8sVersion: inspect.K8sVersion(p.bin), Generation: string(l.Generation), Locator: p.by, DryRun: o.DryRun}
	if err := confirmed(l, o.Force); err != nil {
		p.close()
		return nil, res, fmt.Errorf("pid %d: %w", pid, err)
	}
	return p, res, nil
}

func set(o Options, pid int) (ProcessResult, error) {
	start := time.Now()
	p, res, err := begin(o, pid)
	if err != nil {
		return res, err
	}
	defer p.close()
	l := p.target.Locate.Layout
	runners, err := selectRunners(p.found, o.Runner)
	if err != nil {
		return res, err
	}
	var rws []patch.RunnerWrites
	health := newProbe(p.proc)
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
	if err := apply(o, p, &res, rws, "set"); err != nil {
		return res, err
	}
	res.Total = time.Since(start).String()
	return res, nil
}

// addRunner adds a runner's planned change to the result, and to the writes if it has any.
func addRunner(res *ProcessResult, rws []patch.RunnerWrites, f locate.Found, v patch.Values, ws []patch.Write) []patch.RunnerWrites {
	rr := RunnerResult{Address: fmt.Sprintf("%#x", f.Address), Old: patch.ValuesOf(f), New: v, Fields: []string{}}
	for _, w := range ws {
		rr.Fields = append(rr.Fields, w.Field)
	}
	res.Runners = append(res.Runners, rr)
	if len(ws) == 0 {
		return rws
	}
	return append(rws, patch.RunnerWrites{Found: f, Writes: ws})
}

// confirmed refuses a built-in layout that kube-proxy's values could not confirm (its /configz
// unreadable, say), unless forced: every other check holds, but the offsets themselves are a guess.
func confirmed(l locate.Layout, force bool) error {
	if l.Unconfirmed == "" || force {
		return nil
	}
	return fmt.Errorf("%w: the runner's layout is kptune's built-in table, which kube-proxy's own values could not confirm (%s): nothing written; use --force to write with it anyway",
		patch.ErrRefused, l.Unconfirmed)
}

// apply writes inside one stop of the process. The audit log gets each runner's change before the
// stop (nothing is written if it cannot), and its result after.
func apply(o Options, p *prepared, res *ProcessResult, rws []patch.RunnerWrites, action string) error {
	if err := o.Store.Audit(auditEntries(action, "intent", p.proc.PID, res.Runners, 0, nil)...); err != nil {
		return fmt.Errorf("pid %d: write the audit log in %s: %w: nothing written (use --state-dir)", p.proc.PID, o.Store.Dir, err)
	}
	st, err := patch.Apply(p.target, rws)
	res.Threads, res.Stopped, res.StoppedNS = st.Threads, st.Stopped.String(), int64(st.Stopped)
	res.StoppingNS, res.InsideNS = int64(st.Stopping), int64(st.Inside)
	phase := "done"
	if err != nil {
		phase = "failed"
	}
	results := auditEntries(action, phase, p.proc.PID, res.Runners, st.Stopped, err)
	if aerr := o.Store.Audit(results...); aerr != nil {
		o.Log.Warn("audit log: the result of a change not recorded (its intent was)", "pid", p.proc.PID, "error", aerr)
	}
	if errors.Is(err, procfs.ErrGone) {
		return fmt.Errorf("pid %d exited before the write: nothing written; run kptune again for the new kube-proxy", p.proc.PID)
	}
	if err != nil {
		return fmt.Errorf("pid %d: %w", p.proc.PID, err)
	}
	o.pause("released")
	for _, e := range results {
		o.Log.Info(action, "uid", e.UID, "pid", e.PID, "runner", e.Runner, "old", e.Old, "new", e.New, "stopped", st.Stopped)
	}
	return nil
}

// remember saves the original values before the first change of a process.
func remember(s state.Store, p *prepared) error {
	r, err := s.Load(p.proc.PID, p.proc.StartTime, p.bin.BuildID())
	if err != nil || r != nil {
		return err
	}
	r = &state.Record{PID: p.proc.PID, StartTime: p.proc.StartTime, BuildID: p.bin.BuildID(), Runners: map[string]state.Original{}}
	for _, f := range p.found {
		r.Runners[fmt.Sprintf("%#x", f.Address)] = state.Original{MinInterval: f.MinInterval, MaxInterval: f.MaxInterval, RetryInterval: f.RetryInterval, Burst: f.Burst}
	}
	if err := s.Save(r); err != nil {
		return fmt.Errorf("record the original values in %s: %w (use --state-dir): nothing written", s.Dir, err)
	}
	return nil
}

func reset(o Options, pid int) (ProcessResult, error) {
	start := time.Now()
	p, res, err := begin(o, pid)
	if err != nil {
		return res, err
	}
	defer p.close()
	l := p.target.Locate.Layout
	rec, err := o.Store.Load(pid, p.proc.StartTime, p.bin.BuildID())
	if err != nil {
		return res, err
	}
	if rec == nil {
		return res, fmt.Errorf("nothing to reset for pid %d: kptune has not changed it since it started", pid)
	}
	var rws []patch.RunnerWrites
	health := newProbe(p.proc)
	for _, f := range p.found {
		orig, ok := rec.Runners[fmt.Sprintf("%#x", f.Address)]
		if !ok {
			return res, fmt.Errorf("pid %d: runner %#x has no recorded original: nothing written", pid, f.Address)
		}
		c := patch.Change{MinInterval: &orig.MinInterval}
		if l.Generation == locate.Runner {
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
		if err := apply(o, p, &res, rws, "reset"); err != nil {
			return res, err
		}
	}
	if err := o.Store.Remove(pid, p.proc.StartTime); err != nil {
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
