// Package agent keeps every kube-proxy of a node at the minimum sync period a policy chooses, by
// itself: it finds the node's kube-proxy processes, locates their sync runners once, reads their
// periods each round (a few hundred bytes, no scan), decides with the configured policy (or the
// Node's kptune.io/min-sync-period annotation), writes only when the period differs, and starts
// over when kube-proxy restarts. It serves its own Prometheus metrics, /healthz and /readyz, records
// an Event on its Node for every change, and reloads its configuration file when it changes.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"kptune/internal/gobin"
	"kptune/internal/inspect"
	"kptune/internal/kpmetrics"
	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/policy"
	"kptune/internal/procfs"
	"kptune/internal/state"
	"kptune/internal/tune"
)

// Options configure an agent.
type Options struct {
	ConfigPath  string        // the configuration file, reloaded when it changes ("": Config)
	Config      Config        // the configuration without a file
	Interval    time.Duration // how often to look over the node's kube-proxies
	Listen      string        // metrics, /healthz and /readyz ("": none)
	Kubeconfig  string        // "": in-cluster, or no API server outside a cluster
	NodeName    string        // this node; only kube-proxies serving it are managed
	StateDir    string
	ResetOnExit bool // restore every kube-proxy the agent changed when it stops
	Log         *slog.Logger
	// Ready, if set, receives the listener's address once the agent serves.
	Ready chan<- string
}

// retryAfter is how long a refused or failed write waits before the same value is tried again.
const retryAfter = time.Minute

// Agent is a running node agent.
type Agent struct {
	o      Options
	log    *slog.Logger
	m      *metrics
	kube   *kube
	cfg    Config
	cfgRaw []byte
	pol    policy.Policy

	procs map[key]*managed
	other map[key]bool // processes known not to be a kube-proxy of this node, or refused
	ready atomic.Bool
	last  atomic.Int64
	// blocked says why the agent cannot work at all (a privilege it lacks); set before it serves.
	blocked string
}

// key identifies a process: its PID and start time, and its executable's device and inode, since an
// exec (runc init, or a shell's exec, turning into kube-proxy) keeps the first two.
type key struct {
	pid      int
	start    uint64
	dev, ino uint64
}

// managed is one kube-proxy.
type managed struct {
	key        key
	proc       procfs.Process
	bin        *gobin.Binary
	target     locate.Target
	runners    []locate.Found
	located    bool
	syncPeriod time.Duration
	changed    bool // the agent wrote to it

	desired time.Duration
	source  string
	decided time.Time
	window  *sample
	seen    map[time.Duration]spent // what each period cost lately
	// idle: the last window held no sync; idleCores is what kube-proxy spent over it.
	idle      bool
	idleCores float64
	refused   time.Duration
	retryAt   time.Time
	badNotice string // the last override value warned about
	// A kube-proxy builds its sync runners once it reaches the API server: until they are found,
	// locating is tried every round, then less and less often.
	misses     int
	nextLocate time.Time
	gaveUp     bool // refused: forgotten at the end of the round
}

// New checks the options and loads the configuration.
func New(o Options) (*Agent, error) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	a := &Agent{o: o, log: o.Log, m: newMetrics(), cfg: o.Config, procs: map[key]*managed{}, other: map[key]bool{}}
	if o.ConfigPath != "" {
		cfg, raw, err := LoadConfig(o.ConfigPath)
		if err != nil {
			return nil, err
		}
		a.cfg, a.cfgRaw = cfg, raw
	}
	pol, err := a.cfg.Build()
	if err != nil {
		return nil, err
	}
	a.pol = pol
	return a, nil
}

// Run serves and reconciles until ctx ends, then (with ResetOnExit) restores what it changed.
func (a *Agent) Run(ctx context.Context) error {
	if cfg, err := restConfig(a.o.Kubeconfig); err != nil {
		return fmt.Errorf("API server configuration: %w", err)
	} else if cfg != nil {
		if a.o.NodeName == "" {
			return errors.New("with an API server the agent needs its node's name: --node-name or NODE_NAME (the downward API's spec.nodeName)")
		}
		if a.kube, err = newKube(ctx, cfg, a.o.NodeName, a.log); err != nil {
			return err
		}
		defer a.kube.close()
	} else {
		a.log.Info("no API server: no node override, no Events")
	}
	if a.o.Listen != "" {
		srv, err := a.serve()
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	a.log.Info("agent started", "policy", a.pol.Name(), "node", a.o.NodeName, "interval", a.o.Interval)
	if why := missingPrivilege(); why != "" {
		// Without it every kube-proxy would look unreadable, and be skipped without a word.
		a.blocked = why
		a.log.Error("the agent cannot work: it writes nothing and stays unready", "reason", why)
		a.kube.event(corev1.EventTypeWarning, "MissingCapability", "kptune agent: %s", why)
	}
	tick := time.NewTicker(a.o.Interval)
	defer tick.Stop()
	for {
		if a.blocked == "" {
			a.reconcile(ctx)
		} else {
			a.last.Store(time.Now().UnixNano()) // alive, and saying why it is not ready
		}
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-tick.C:
		}
	}
}

func (a *Agent) serve() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.o.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.o.Listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		last := time.Unix(0, a.last.Load())
		if age := time.Since(last); age > 3*a.o.Interval+10*time.Second {
			http.Error(w, fmt.Sprintf("last reconcile %v ago", age.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.blocked != "" {
			http.Error(w, a.blocked, http.StatusServiceUnavailable)
			return
		}
		if !a.ready.Load() {
			http.Error(w, "not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a.log.Info("serving metrics, /healthz and /readyz", "address", ln.Addr().String())
	if a.o.Ready != nil {
		a.o.Ready <- ln.Addr().String()
	}
	return srv, nil
}

// reconcile is one round: configuration, discovery, and each kube-proxy.
func (a *Agent) reconcile(ctx context.Context) {
	a.reload()
	a.discover()
	for k, mp := range a.procs {
		if ctx.Err() != nil {
			return
		}
		if !a.guard(mp.proc.PID, "tend", func() { a.tend(ctx, mp) }) {
			mp.gaveUp = true
		}
		if mp.gaveUp {
			// Refused for good (a panic, or what locating it found): examined again only if it
			// execs another executable.
			mp.bin.Close()
			a.m.forget(strconv.Itoa(k.pid))
			delete(a.procs, k)
			a.other[k] = true
		}
	}
	a.m.kubeProxies.Set(float64(len(a.procs)))
	now := time.Now()
	a.last.Store(now.UnixNano())
	a.m.lastLoop.Set(float64(now.Unix()))
	a.ready.Store(true)
}

// reload rereads the configuration file; a bad one is reported and the last good one kept.
func (a *Agent) reload() {
	if a.o.ConfigPath == "" {
		return
	}
	raw, err := os.ReadFile(a.o.ConfigPath)
	if err == nil && bytes.Equal(raw, a.cfgRaw) {
		return
	}
	var cfg Config
	var pol policy.Policy
	if err == nil {
		if cfg, err = ParseConfig(raw); err == nil {
			pol, err = cfg.Build()
		}
	}
	if err != nil {
		if !bytes.Equal(raw, a.cfgRaw) {
			a.m.reloads.WithLabelValues("error").Inc()
			a.log.Warn("configuration not reloaded, keeping the last good one", "error", err)
			a.cfgRaw = raw
		}
		return
	}
	a.cfg, a.cfgRaw, a.pol = cfg, raw, pol
	a.m.reloads.WithLabelValues("ok").Inc()
	a.log.Info("configuration reloaded", "policy", pol.Name())
	for _, mp := range a.procs {
		mp.decided, mp.window, mp.refused, mp.seen, mp.idle = time.Time{}, nil, 0, nil, false
	}
}

// discover finds the node's kube-proxy processes; each process is examined once.
func (a *Agent) discover() {
	procs, err := procfs.List()
	if err != nil {
		a.log.Warn("list processes", "error", err)
		return
	}
	self := os.Getpid()
	seen := map[key]bool{}
	for _, p := range procs {
		if p.PID == self || len(p.Cmdline) == 0 {
			continue // the agent, and kernel threads
		}
		k := key{pid: p.PID, start: p.StartTime}
		k.dev, k.ino, _ = procfs.ExeID(p.PID) // 0, 0 for a process that exited meanwhile: seen next round
		seen[k] = true
		if a.other[k] || a.procs[k] != nil {
			continue
		}
		a.other[k] = true // until examined to the end: a panic leaves it refused
		a.guard(p.PID, "examine", func() {
			_, bin, err := inspect.Open(p.PID)
			switch {
			case errors.Is(err, inspect.ErrSuspect):
				a.refuse(p.PID, "identity", err)
				return
			case err != nil:
				return
			case !a.serves(p):
				bin.Close()
				node, _ := kpmetrics.FlagValue(p.Cmdline, "--hostname-override")
				a.log.Info("kube-proxy of another node: left alone", "pid", p.PID, "node", node)
				return
			}
			delete(a.other, k)
			a.procs[k] = &managed{key: k, proc: p, bin: bin}
			a.log.Info("kube-proxy found", "pid", p.PID, "k8s", inspect.K8sVersion(bin))
		})
	}
	for k, mp := range a.procs {
		if !seen[k] {
			a.log.Info("kube-proxy gone", "pid", k.pid)
			a.m.forget(strconv.Itoa(k.pid))
			mp.bin.Close()
			delete(a.procs, k)
		}
	}
	for k := range a.other {
		if !seen[k] {
			delete(a.other, k)
		}
	}
}

// serves reports whether a kube-proxy serves this node: its --hostname-override, where it has one,
// names it.
func (a *Agent) serves(p procfs.Process) bool {
	if a.o.NodeName == "" {
		return true
	}
	v, ok := kpmetrics.FlagValue(p.Cmdline, "--hostname-override")
	return !ok || v == a.o.NodeName
}

// tend locates, reads, decides and writes for one kube-proxy.
func (a *Agent) tend(ctx context.Context, mp *managed) {
	pid := strconv.Itoa(mp.proc.PID)
	now := time.Now()
	if !mp.located {
		if now.Before(mp.nextLocate) {
			return
		}
		start := time.Now()
		lctx, cancel := context.WithTimeout(ctx, locateTimeout)
		t, found, _, err := inspect.LocateBy(lctx, mp.proc.PID, mp.bin, inspect.LocateOptions{Locator: inspect.ByScan})
		cancel()
		switch {
		case (errors.Is(err, locate.ErrLayout) || errors.Is(err, locate.ErrScanLimit)) && procfs.Alive(mp.proc.PID, mp.proc.StartTime):
			// What its binary declares, or what it maps, is beyond any kube-proxy: for good.
			a.refuse(mp.proc.PID, "locate", err)
			mp.gaveUp = true
			return
		case err != nil:
			// A kube-proxy builds its proxiers once it reaches the API server (no runner yet), and
			// reading a live process can fail for a moment: try again.
			mp.misses++
			mp.nextLocate = now.Add(locateBackoff(mp.misses, a.o.Interval))
			a.log.Debug("runners not found yet", "pid", mp.proc.PID, "error", err, "next", mp.nextLocate)
			return
		}
		a.m.locate.Observe(time.Since(start).Seconds())
		mp.target, mp.runners, mp.located = t, found, true
		// The layout is known: the type descriptors need not stay in memory, and the agent's
		// footprint returns to its steady state at once rather than when the scavenger gets to it.
		mp.bin.ReleaseTypes()
		debug.FreeOSMemory()
		mp.syncPeriod = 30 * time.Second
		if periods, err := inspect.Periods(ctx, mp.proc); err == nil && periods.Sync > 0 {
			mp.syncPeriod = periods.Sync
		}
		a.log.Info("runners located", "pid", mp.proc.PID, "runners", len(found), "minSyncPeriod", found[0].MinInterval, "syncPeriod", mp.syncPeriod)
	}
	for i, r := range mp.runners {
		f, ok := locate.Validate(mp.target, r.Address)
		if !ok {
			mp.located = false // changed under us: locate again next round
			return
		}
		mp.runners[i] = f
		a.m.period.WithLabelValues(pid, fmt.Sprintf("%#x", f.Address)).Set(f.MinInterval.Seconds())
		if !f.Patchable {
			return // the reason was reported by locate; nothing to write
		}
	}
	current := mp.runners[0].MinInterval
	desired, source := a.desired(ctx, mp, current, now)
	if desired <= 0 {
		return
	}
	a.m.desired.DeletePartialMatch(prometheus.Labels{"pid": pid})
	a.m.desired.WithLabelValues(pid, source).Set(desired.Seconds())
	differs := false
	for _, r := range mp.runners {
		differs = differs || r.MinInterval != desired
	}
	if !differs || (desired == mp.refused && now.Before(mp.retryAt)) {
		return
	}
	a.write(mp, current, desired, source)
}

// locateTimeout bounds one search for a kube-proxy's runners (230 ms at 5000 Services).
const locateTimeout = 20 * time.Second

// locateBackoff is the wait before the next search for the runners of a kube-proxy in which misses
// searches found none: every round for the first five (a kube-proxy that is starting), then twice as
// long each time, up to two minutes (a process that passes for a kube-proxy and never holds one).
func locateBackoff(misses int, interval time.Duration) time.Duration {
	if misses <= 5 {
		return 0
	}
	return min(interval<<min(misses-5, 16), 2*time.Minute)
}

// guard runs one process's work (inspect.Safely); a panic in it (a defect in reading what that
// process holds) is logged with its stack and counted, refuses that process rather than ending the
// agent, and is reported as false. Never used inside a stop of kube-proxy: a panic there ends the
// agent, and the kernel releases kube-proxy.
func (a *Agent) guard(pid int, what string, fn func()) bool {
	var pe *inspect.PanicError
	if err := inspect.Safely(pid, fn); errors.As(err, &pe) {
		a.m.panics.Inc()
		a.refuse(pid, "panic", fmt.Errorf("%s: %w\n%s", what, pe, pe.Stack))
		return false
	}
	return true
}

// refuse reports a process the agent will not manage, with why.
func (a *Agent) refuse(pid int, reason string, err error) {
	a.m.refused.WithLabelValues(reason).Inc()
	a.log.Warn("process refused", "pid", pid, "reason", reason, "error", err)
}

// desired is the period the node's override or the policy asks for (0: no decision yet).
func (a *Agent) desired(ctx context.Context, mp *managed, current time.Duration, now time.Time) (time.Duration, string) {
	if v, ok := a.kube.override(); ok {
		if d, ok := a.override(mp, v); ok {
			return d, "node annotation"
		}
	}
	if s, ok := a.pol.(policy.Static); ok {
		return s.Period, "static"
	}
	if mp.source != "adaptive" {
		mp.desired, mp.decided, mp.window, mp.seen, mp.idle = 0, time.Time{}, nil, nil, false
	}
	mp.source = "adaptive"
	if mp.window == nil {
		if s, err := takeSample(ctx, mp.proc); err == nil {
			mp.window, mp.decided = &s, now
		}
		return mp.desired, "adaptive"
	}
	// A window of at least three periods: over fewer, syncs (and their CPU) arrive in lumps.
	if now.Sub(mp.decided) < max(a.cfg.DecideEvery.Duration, 3*current) {
		return mp.desired, "adaptive"
	}
	if mp.idle {
		// kube-proxy synced nothing in the last window. Reading its metrics costs it CPU (as much as
		// everything else it does at rest), so they are read again only once its CPU rises, or
		// maxIdle after the last reading.
		cpu, err := procfs.CPU(mp.proc.PID)
		busy := err == nil && !stillIdle(mp.idleCores, cpu-mp.window.cpu, now.Sub(mp.window.at))
		if !busy && now.Sub(mp.decided) < max(maxIdle, a.cfg.DecideEvery.Duration) {
			return mp.desired, "adaptive"
		}
		if busy {
			// The window since the last reading is mostly idle and would understate what the period
			// costs now: a fresh one starts here.
			if s, err := takeSample(ctx, mp.proc); err == nil {
				mp.window, mp.decided, mp.idle = &s, now, false
				a.log.Info("kube-proxy is busy again", "pid", mp.proc.PID)
			}
			return mp.desired, "adaptive"
		}
	}
	s, err := takeSample(ctx, mp.proc)
	if err != nil {
		a.log.Warn("read kube-proxy's metrics", "pid", mp.proc.PID, "error", err)
		return mp.desired, "adaptive"
	}
	in := s.inputs(*mp.window, mp.syncPeriod)
	in.Seen = mp.recall(current, now, 20*a.cfg.DecideEvery.Duration)
	d := a.pol.Decide(current, in)
	if in.Syncs >= 1 {
		mp.remember(current, in, now)
	}
	pid := strconv.Itoa(mp.proc.PID)
	a.m.cpu.WithLabelValues(pid).Set(in.CPUSeconds / in.Window.Seconds())
	a.m.changes.WithLabelValues(pid).Set(in.Changes / in.Window.Seconds())
	if in.Syncs > 0 {
		a.m.syncCost.WithLabelValues(pid).Set(in.CPUSeconds / in.Syncs)
	}
	a.log.Info("decision", "pid", mp.proc.PID, "policy", a.pol.Name(), "current", current, "next", d.Period, "reason", d.Reason)
	if in.Syncs < 1 {
		if !mp.idle {
			a.log.Info("kube-proxy is idle: its metrics are read again when its CPU rises, or in a minute", "pid", mp.proc.PID)
		}
		mp.idle, mp.idleCores = true, in.CPUSeconds/in.Window.Seconds()
	} else {
		mp.idle = false
	}
	mp.window, mp.decided, mp.desired = &s, now, d.Period
	return d.Period, "adaptive"
}

// override reads the node's annotation value v: a period clamped to the configuration's floor and
// ceiling, since whoever may patch the Node sets it (a node's kubelet may patch its own Node). A value
// that is not a positive duration is ignored; one outside the bounds is held at the nearest. Either
// is reported once (log, Event, metric).
func (a *Agent) override(mp *managed, v string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	floor, ceiling := a.cfg.Floor.Duration, a.cfg.Ceiling.Duration
	notice := func(reason, format string, args ...any) {
		if mp.badNotice == v {
			return
		}
		mp.badNotice = v
		a.m.overrides.WithLabelValues(reason).Inc()
		msg := fmt.Sprintf(format, args...)
		a.log.Warn("the node's override is "+reason, "annotation", Annotation, "value", v, "detail", msg)
		a.kube.event(corev1.EventTypeWarning, "InvalidOverride", "%s=%q %s", Annotation, v, msg)
	}
	switch {
	case err != nil || d <= 0:
		notice("ignored", "is not a positive duration: ignored")
		return 0, false
	case d < floor:
		notice("clamped", "is below the floor %v: %v is held", floor, floor)
		return floor, true
	case d > ceiling:
		notice("clamped", "is above the ceiling %v: %v is held", ceiling, ceiling)
		return ceiling, true
	}
	mp.badNotice = ""
	return d, true
}

// maxIdle is the longest an idle kube-proxy's metrics go unread.
const maxIdle = time.Minute

// stillIdle reports whether kube-proxy, which spent idle cores over its last window without a sync,
// has spent (spent over elapsed) no more since than that rate twice over and two clock ticks, the
// grain of the kernel's CPU accounting. A sync at scale costs far more; the syncs of a small cluster
// may cost less, and wait at most maxIdle to be seen: what they cost is negligible, and the period
// held meanwhile is the one chosen before the cluster went quiet.
func stillIdle(idle float64, spent, elapsed time.Duration) bool {
	const tick = 10 * time.Millisecond
	return spent <= time.Duration(2*idle*float64(elapsed))+2*tick
}

// held is the kube-proxy as the agent holds it, its runners read again now (the round's reading
// predates any write the agent made since), for a write without a second scan; nil until they are
// located, or if one no longer validates: tune then locates them itself.
func (mp *managed) held() *tune.Located {
	if !mp.located {
		return nil
	}
	runners := make([]locate.Found, len(mp.runners))
	for i, r := range mp.runners {
		f, ok := locate.Validate(mp.target, r.Address)
		if !ok {
			return nil
		}
		runners[i] = f
	}
	return &tune.Located{Proc: mp.proc, ExeDev: mp.key.dev, ExeIno: mp.key.ino, Bin: mp.bin, Target: mp.target, Runners: runners}
}

func (a *Agent) write(mp *managed, current, desired time.Duration, source string) {
	res, err := tune.Set(tune.Options{PID: mp.proc.PID, Change: patch.Change{MinInterval: &desired},
		Store: state.Store{Dir: a.o.StateDir}, Log: a.log, Located: mp.held()})
	if err != nil {
		mp.refused, mp.retryAt = desired, time.Now().Add(retryAfter)
		a.m.refusals.WithLabelValues("set").Inc()
		a.log.Warn("period not set", "pid", mp.proc.PID, "from", current, "to", desired, "source", source, "error", err)
		a.kube.event(corev1.EventTypeWarning, "MinSyncPeriodRefused", "kube-proxy pid %d: %v → %v (%s) not written: %v", mp.proc.PID, current, desired, source, err)
		return
	}
	mp.changed, mp.refused = true, 0
	a.m.writes.WithLabelValues("set").Inc()
	for _, p := range res.Processes {
		if p.StoppedNS > 0 {
			a.m.stop.Observe(float64(p.StoppedNS) / 1e9)
		}
	}
	for i := range mp.runners {
		mp.runners[i].MinInterval = desired
	}
	a.kube.event(corev1.EventTypeNormal, "MinSyncPeriodSet", "kube-proxy pid %d: minimum sync period %v → %v (%s)", mp.proc.PID, current, desired, source)
}

// shutdown restores the kube-proxies the agent changed, when asked to.
func (a *Agent) shutdown() {
	for _, mp := range a.procs {
		if a.o.ResetOnExit && mp.changed {
			if _, err := tune.Reset(tune.Options{PID: mp.proc.PID, Store: state.Store{Dir: a.o.StateDir}, Log: a.log,
				Locate: inspect.LocateOptions{Locator: inspect.ByScan}, Located: mp.held()}); err != nil {
				a.m.refusals.WithLabelValues("reset").Inc()
				a.log.Warn("reset on exit", "pid", mp.proc.PID, "error", err)
			} else {
				a.m.writes.WithLabelValues("reset").Inc()
				a.kube.event(corev1.EventTypeNormal, "MinSyncPeriodReset", "kube-proxy pid %d: restored the minimum sync period it started with (agent stopping)", mp.proc.PID)
			}
		}
		mp.bin.Close()
	}
	a.log.Info("agent stopped")
}

// spent is what kube-proxy spent, in cores, at one period.
type spent struct {
	cores float64
	at    time.Time
}

// remember records what the current period cost over the window (blended with what it cost before).
func (mp *managed) remember(period time.Duration, in policy.Inputs, now time.Time) {
	if mp.seen == nil {
		mp.seen = map[time.Duration]spent{}
	}
	used := in.CPUSeconds / in.Window.Seconds()
	if in.CPUSeconds <= 0 {
		used = in.SyncSeconds / in.Window.Seconds()
	}
	if old, ok := mp.seen[period]; ok {
		used = (used + old.cores) / 2
	}
	mp.seen[period] = spent{cores: used, at: now}
}

// recall returns what the other periods cost, forgetting what is older than maxAge: churn changes.
func (mp *managed) recall(current time.Duration, now time.Time, maxAge time.Duration) map[time.Duration]float64 {
	out := map[time.Duration]float64{}
	for p, s := range mp.seen {
		switch {
		case now.Sub(s.at) > maxAge:
			delete(mp.seen, p)
		case p != current:
			out[p] = s.cores
		}
	}
	return out
}

// sample is one reading of kube-proxy's counters and CPU.
type sample struct {
	at      time.Time
	syncs   uint64
	syncSum float64
	changes float64
	cpu     time.Duration
}

func takeSample(ctx context.Context, p procfs.Process) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	snap, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Scrape(ctx)
	if err != nil {
		return sample{}, err
	}
	cpu, err := procfs.CPU(p.PID)
	if err != nil {
		return sample{}, err
	}
	n, sum := snap.Histogram(kpmetrics.SyncDuration)
	return sample{at: snap.Time, syncs: n, syncSum: sum, cpu: cpu,
		changes: snap.Value(kpmetrics.EndpointChanges) + snap.Value(kpmetrics.ServiceChanges)}, nil
}

// inputs are the policy's inputs over the window from prev to s.
func (s sample) inputs(prev sample, syncPeriod time.Duration) policy.Inputs {
	return policy.Inputs{
		Window: s.at.Sub(prev.at), Syncs: float64(s.syncs - prev.syncs), SyncSeconds: s.syncSum - prev.syncSum,
		CPUSeconds: (s.cpu - prev.cpu).Seconds(), Changes: s.changes - prev.changes, SyncPeriod: syncPeriod,
	}
}

// missingPrivilege says which privilege the agent lacks to read and stop a kube-proxy, or "": user
// root (kube-proxy runs as root, and a process's memory is readable by its own user) and the
// effective capability CAP_SYS_PTRACE (kube-proxy holds capabilities the agent does not, so even
// root needs it to read /proc/PID/mem and to stop it).
func missingPrivilege() string {
	if os.Geteuid() != 0 {
		return fmt.Sprintf("it runs as uid %d, not root: run it as root (the chart's securityContext.runAsUser 0)", os.Geteuid())
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Sprintf("cannot read its capabilities: %v", err)
	}
	if data[unix.CAP_SYS_PTRACE/32].Effective&(1<<(unix.CAP_SYS_PTRACE%32)) == 0 {
		return "it lacks the capability CAP_SYS_PTRACE: add SYS_PTRACE to the container's securityContext.capabilities (the chart's capabilities value)"
	}
	return ""
}
