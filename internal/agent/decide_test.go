package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"kptune/internal/kpmetrics"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/procfs"
	"kptune/internal/target"
	"kptune/internal/tune"
)

// fakeKubeProxy is a kube-proxy held in memory: its runners' periods, and what was asked of it.
type fakeKubeProxy struct {
	pid       int
	period    time.Duration
	patchable bool
	reason    string
	locateErr []error // returned by successive locates, then nil
	readErr   error
	setErr    error
	refuse    func(d time.Duration) error // if set, what a set of d returns
	sync      time.Duration

	locates, reads int
	sets           []time.Duration
	resets         int
	closed         bool
}

func (f *fakeKubeProxy) version() string { return "v1.33.5" }

func (f *fakeKubeProxy) locate(context.Context) error {
	f.locates++
	if len(f.locateErr) > 0 {
		err := f.locateErr[0]
		f.locateErr = f.locateErr[1:]
		return err
	}
	return nil
}

func (f *fakeKubeProxy) read() ([]locate.Found, error) {
	f.reads++
	if f.readErr != nil {
		err := f.readErr
		f.readErr = nil
		return nil, err
	}
	return []locate.Found{{Address: 0x1000, MinInterval: f.period, Patchable: f.patchable, Reason: f.reason}}, nil
}

func (f *fakeKubeProxy) syncPeriod(context.Context) time.Duration { return f.sync }
func (f *fakeKubeProxy) alive() bool                              { return true }

func (f *fakeKubeProxy) set(_ context.Context, d time.Duration) (time.Duration, error) {
	f.sets = append(f.sets, d)
	if f.setErr != nil {
		return 0, f.setErr
	}
	if f.refuse != nil {
		if err := f.refuse(d); err != nil {
			return 0, err
		}
	}
	f.period = d
	return 300 * time.Microsecond, nil
}

func (f *fakeKubeProxy) reset(context.Context) error { f.resets++; return nil }
func (f *fakeKubeProxy) close()                      { f.closed = true }

// fakeSampler is kube-proxy's CPU and counters as a function of time: it syncs once a period,
// each sync costing cost of CPU, while busy.
type fakeSampler struct {
	kp      *fakeKubeProxy
	start   time.Time
	now     func() time.Time
	cost    time.Duration // CPU per sync
	busy    func(elapsed time.Duration) bool
	samples int // readings of its metrics
	// latency, if set, is the network programming latency of every change at the period kube-proxy
	// holds; changes come at 10 a second.
	latency func(period time.Duration) time.Duration
	hist    []kpmetrics.Bucket
	last    time.Time
}

func (s *fakeSampler) state() (syncs uint64, cpu time.Duration) {
	// Integrate syncs over elapsed time, second by second, at the period kube-proxy holds now.
	el := s.now().Sub(s.start)
	per := s.kp.period
	for t := time.Duration(0); t < el; t += time.Second {
		if s.busy == nil || s.busy(t) {
			if int64(t/time.Second)%int64(max(per/time.Second, 1)) == 0 {
				syncs++
			}
		}
	}
	return syncs, time.Duration(syncs) * s.cost
}

func (s *fakeSampler) cpu(int) (time.Duration, error) {
	_, c := s.state()
	return c, nil
}

func (s *fakeSampler) sample(context.Context, procfs.Process) (sample, error) {
	s.samples++
	n, c := s.state()
	out := sample{at: s.now(), syncs: n, syncSum: c.Seconds(), cpu: c, changes: float64(n) * 10}
	if s.latency != nil {
		if s.hist == nil {
			for _, ub := range []float64{0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 20, 25, 30, 40, 60, math.Inf(1)} {
				s.hist = append(s.hist, kpmetrics.Bucket{UpperBound: ub})
			}
			s.last = s.start
		}
		var changes uint64 // 10 a second while busy
		for t := s.last.Sub(s.start); t < s.now().Sub(s.start); t += time.Second {
			if s.busy == nil || s.busy(t) {
				changes += 10
			}
		}
		v := s.latency(s.kp.period).Seconds()
		for i := range s.hist {
			if v <= s.hist[i].UpperBound {
				s.hist[i].Count += changes
			}
		}
		s.last = s.now()
		if s.hist[len(s.hist)-1].Count > 0 {
			// As kube-proxy's labelled histogram: not exposed before its first sample.
			out.latency = slices.Clone(s.hist)
		}
	}
	return out, nil
}

// bench is an agent over fake processes, with a clock of its own.
type bench struct {
	t       *testing.T
	a       *Agent
	clock   time.Time
	procs   []procfs.Process
	ino     map[int]uint64
	kps     map[int]*fakeKubeProxy // by PID, what open returns
	opened  map[int]int
	openErr map[int]error
	node    *corev1.Node
	rec     *record.FakeRecorder
}

func newBench(t *testing.T, cfg Config) *bench {
	t.Helper()
	a, err := New(Options{Config: cfg, Log: quiet(), Interval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{t: t, a: a, clock: time.Unix(1_800_000_000, 0), ino: map[int]uint64{}, kps: map[int]*fakeKubeProxy{},
		opened: map[int]int{}, openErr: map[int]error{}}
	a.now = func() time.Time { return b.clock }
	a.node = node{
		list:  func() ([]procfs.Process, error) { return b.procs, nil },
		exeID: func(pid int) (uint64, uint64, error) { return 1, b.ino[pid], nil },
		open: func(_ context.Context, p procfs.Process) (kubeProxy, error) {
			b.opened[p.PID]++
			if err := b.openErr[p.PID]; err != nil {
				return nil, err
			}
			kp := b.kps[p.PID]
			if kp == nil {
				return nil, fmt.Errorf("pid %d: %w", p.PID, target.ErrNotKubeProxy)
			}
			return kp, nil
		},
	}
	b.node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{}}}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := idx.Add(b.node); err != nil {
		t.Fatal(err)
	}
	b.rec = record.NewFakeRecorder(100)
	a.kube = &kube{node: "n1", nodes: listersv1.NewNodeLister(idx), recorder: b.rec, ref: &corev1.ObjectReference{Kind: "Node", Name: "n1"}}
	return b
}

// kubeProxy adds a kube-proxy process holding period.
func (b *bench) kubeProxy(pid int, start uint64, period time.Duration) *fakeKubeProxy {
	kp := &fakeKubeProxy{pid: pid, period: period, patchable: true, sync: 30 * time.Second}
	b.kps[pid] = kp
	b.procs = append(b.procs, procfs.Process{PID: pid, StartTime: start, Comm: "kube-proxy", Cmdline: []string{"kube-proxy"}})
	b.ino[pid] = 100 + uint64(pid)
	return kp
}

// rounds runs n rounds of the agent, a step apart.
func (b *bench) rounds(n int, step time.Duration) {
	for range n {
		b.a.reconcile(context.Background())
		b.clock = b.clock.Add(step)
	}
}

func (b *bench) events() []string {
	var out []string
	for {
		select {
		case e := <-b.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func static(d time.Duration) Config {
	c := DefaultConfig()
	c.MinSyncPeriod = metav1.Duration{Duration: d}
	return c
}

func objectiveConfig() Config {
	c := DefaultConfig()
	c.PolicyName = "objective"
	c.DecideEvery = metav1.Duration{Duration: 10 * time.Second}
	return c
}

func adaptive(budget float64) Config {
	c := DefaultConfig()
	c.PolicyName, c.Budget = "adaptive", budget
	c.DecideEvery = metav1.Duration{Duration: 10 * time.Second}
	return c
}

// TestDecisions: what the agent writes, round by round, for each source of a period (static,
// adaptive, the node's annotation) and each turn of events (a restart, an exec, a refusal, an
// unpatchable runner, runners that move), on kube-proxies held in memory: no root, no cluster.
func TestDecisions(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		run  func(t *testing.T, b *bench)
	}{
		{"static: written once, then held", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			b.rounds(5, 2*time.Second)
			if fmt.Sprint(kp.sets) != "[3s]" || kp.locates != 1 {
				t.Errorf("sets %v, locates %d; want [3s] once, one locate", kp.sets, kp.locates)
			}
			if got := testutil.ToFloat64(b.a.m.writes.WithLabelValues("set")); got != 1 {
				t.Errorf("kptune_writes_total{set} %v", got)
			}
			if ev := b.events(); len(ev) != 1 || !containsAll(ev[0], "Normal MinSyncPeriodSet", "1s → 3s (static)") {
				t.Errorf("events %q", ev)
			}
		}},
		{"static: already at the period, nothing written", static(time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			b.rounds(3, 2*time.Second)
			if len(kp.sets) != 0 || kp.reads != 3 {
				t.Errorf("sets %v reads %d; want none and a read a round", kp.sets, kp.reads)
			}
		}},
		{"annotation: overrides the policy, clamped, and gives way when removed", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			b.node.Annotations[Annotation] = "7s"
			b.rounds(2, 2*time.Second)
			b.node.Annotations[Annotation] = "1h" // above the 30s ceiling
			b.rounds(2, 2*time.Second)
			delete(b.node.Annotations, Annotation)
			b.rounds(2, 2*time.Second)
			if fmt.Sprint(kp.sets) != "[7s 30s 3s]" {
				t.Errorf("sets %v, want [7s 30s 3s]", kp.sets)
			}
			if got := testutil.ToFloat64(b.a.m.overrides.WithLabelValues("clamped")); got != 1 {
				t.Errorf("clamped %v times, want once", got)
			}
		}},
		{"refusal: tried again after retryAfter, not before", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			kp.setErr = fmt.Errorf("pid 10: %w: minimum sync period 3s is longer than kube-proxy's syncPeriod", errRefusedForTest)
			b.rounds(10, 2*time.Second) // 20 s
			if len(kp.sets) != 1 {
				t.Fatalf("%d attempts within 20 s of a refusal, want 1", len(kp.sets))
			}
			if ev := b.events(); len(ev) != 1 || !containsAll(ev[0], "Warning MinSyncPeriodRefused", "syncPeriod") {
				t.Errorf("events %q", ev)
			}
			kp.setErr = nil
			b.rounds(25, 2*time.Second) // past the minute
			if fmt.Sprint(kp.sets) != "[3s 3s]" || kp.period != 3*time.Second {
				t.Errorf("sets %v, period %v; want a second attempt after a minute, written", kp.sets, kp.period)
			}
			if got := testutil.ToFloat64(b.a.m.refusals.WithLabelValues("set")); got != 1 {
				t.Errorf("refusals %v", got)
			}
		}},
		{"the /healthz rail: the longest period it allows is written and held, the wanted one asked again later", static(20 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			allowed := 12 * time.Second
			kp.refuse = func(d time.Duration) error {
				if d <= allowed {
					return nil
				}
				return fmt.Errorf("pid 10: %w", &tune.RailError{Allowed: allowed, Err: fmt.Errorf("%w: a change could wait 62s", errRefusedForTest)})
			}
			b.rounds(150, 2*time.Second) // 5 minutes
			if fmt.Sprint(kp.sets) != "[20s 12s]" || kp.period != allowed {
				t.Fatalf("sets %v, period %v within 5 minutes; want [20s 12s]: the refusal, then the period allowed, held", kp.sets, kp.period)
			}
			if ev := b.events(); len(ev) != 2 || !containsAll(ev[0], "Warning MinSyncPeriodRefused", "12s, the longest the /healthz rail allows, is held for 10m0s") ||
				!containsAll(ev[1], "Normal MinSyncPeriodSet", "1s → 12s") {
				t.Errorf("events %q", ev)
			}
			allowed = 25 * time.Second   // kube-proxy's syncs got shorter
			b.rounds(180, 2*time.Second) // past railHold
			if fmt.Sprint(kp.sets) != "[20s 12s 20s]" || kp.period != 20*time.Second {
				t.Errorf("sets %v, period %v after railHold; want 20s asked again and written", kp.sets, kp.period)
			}
		}},
		{"unpatchable: reported once with its reason, nothing written", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, 0)
			kp.patchable, kp.reason = false, "minSyncPeriod 0: the rate limiter is a no-op"
			b.rounds(4, 2*time.Second)
			if len(kp.sets) != 0 {
				t.Errorf("sets %v to an unpatchable runner", kp.sets)
			}
			if got := testutil.ToFloat64(b.a.m.refused.WithLabelValues("unpatchable")); got != 1 {
				t.Errorf("refused{unpatchable} %v, want 1 (reported once)", got)
			}
		}},
		{"kube-proxy restarted: the old one forgotten, the new one written", static(3 * time.Second), func(t *testing.T, b *bench) {
			old := b.kubeProxy(10, 1, time.Second)
			b.rounds(2, 2*time.Second)
			b.procs, b.kps = nil, map[int]*fakeKubeProxy{}
			fresh := b.kubeProxy(20, 50, time.Second)
			b.rounds(2, 2*time.Second)
			if !old.closed || fmt.Sprint(old.sets) != "[3s]" || fmt.Sprint(fresh.sets) != "[3s]" {
				t.Errorf("old closed %v sets %v, new sets %v", old.closed, old.sets, fresh.sets)
			}
			if len(b.a.procs) != 1 {
				t.Errorf("%d kube-proxies held, want 1", len(b.a.procs))
			}
		}},
		{"exec: the same PID and start time running another executable is examined again", static(3 * time.Second), func(t *testing.T, b *bench) {
			b.procs = []procfs.Process{{PID: 10, StartTime: 1, Comm: "sh", Cmdline: []string{"sh"}}}
			b.rounds(2, 2*time.Second)
			if b.opened[10] != 1 || len(b.a.procs) != 0 {
				t.Fatalf("the shell: opened %d times, %d held", b.opened[10], len(b.a.procs))
			}
			b.procs = nil
			kp := b.kubeProxy(10, 1, time.Second) // same PID and start, new inode
			b.rounds(2, 2*time.Second)
			if b.opened[10] != 2 || fmt.Sprint(kp.sets) != "[3s]" {
				t.Errorf("after the exec: opened %d times, sets %v", b.opened[10], kp.sets)
			}
		}},
		{"runners moved: located again, then written", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			kp.readErr = fmt.Errorf("pid 10: runner 0x1000: %w", target.ErrStale)
			b.rounds(3, 2*time.Second)
			if kp.locates != 2 || fmt.Sprint(kp.sets) != "[3s]" {
				t.Errorf("locates %d sets %v; want a second locate, then the write", kp.locates, kp.sets)
			}
		}},
		{"no runner yet: located every round, then less often", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			for range 8 {
				kp.locateErr = append(kp.locateErr, fmt.Errorf("pid 10: %w", target.ErrNoRunner))
			}
			b.rounds(8, 2*time.Second) // 16 s: five misses a round apart, then back-off
			if kp.locates != 7 || len(kp.sets) != 0 {
				t.Errorf("locates %d, sets %v within 16 s; want 7 locates (5, then 4 s, 8 s apart)", kp.locates, kp.sets)
			}
		}},
		{"a layout beyond any kube-proxy: refused for good", static(3 * time.Second), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			kp.locateErr = []error{fmt.Errorf("pid 10: runner type larger than kube-proxy's: %w", layout.ErrNoLayout)}
			b.rounds(4, 2*time.Second)
			if kp.locates != 1 || !kp.closed || b.opened[10] != 1 || testutil.ToFloat64(b.a.m.refused.WithLabelValues("locate")) != 1 {
				t.Errorf("locates %d closed %v opened %d", kp.locates, kp.closed, b.opened[10])
			}
		}},
		{"suspect: refused by its identity, counted", static(3 * time.Second), func(t *testing.T, b *bench) {
			b.procs = []procfs.Process{{PID: 10, StartTime: 1, Comm: "kube-proxy", Cmdline: []string{"kube-proxy"}}}
			b.openErr[10] = fmt.Errorf("pid 10 runs as uid 65534: %w", errors.Join(target.ErrNotKubeProxy, target.ErrSuspect))
			b.rounds(3, 2*time.Second)
			if b.opened[10] != 1 || testutil.ToFloat64(b.a.m.refused.WithLabelValues("identity")) != 1 {
				t.Errorf("opened %d, refused{identity} %v", b.opened[10], testutil.ToFloat64(b.a.m.refused.WithLabelValues("identity")))
			}
		}},
		{"another node's kube-proxy: left alone", static(3 * time.Second), func(t *testing.T, b *bench) {
			b.a.o.NodeName = "n1"
			kp := b.kubeProxy(10, 1, time.Second)
			b.procs[0].Cmdline = []string{"kube-proxy", "--hostname-override=n2"}
			b.rounds(3, 2*time.Second)
			if len(kp.sets) != 0 || kp.locates != 0 || !kp.closed || len(b.a.procs) != 0 {
				t.Errorf("sets %v locates %d closed %v held %d", kp.sets, kp.locates, kp.closed, len(b.a.procs))
			}
		}},
		{"adaptive: over budget, the period grows; decisions wait for a window", adaptive(0.1), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			s := &fakeSampler{kp: kp, start: b.clock, now: b.a.now, cost: 300 * time.Millisecond}
			b.a.node.sampler = s
			b.rounds(4, 2*time.Second) // 8 s: the first window is still open
			if len(kp.sets) != 0 || s.samples != 1 {
				t.Fatalf("within the first window: sets %v, %d readings of kube-proxy's metrics", kp.sets, s.samples)
			}
			b.rounds(30, 2*time.Second)
			if len(kp.sets) == 0 || kp.period <= time.Second {
				t.Fatalf("at 0.3 cores against a 0.1 budget: sets %v", kp.sets)
			}
			for i := 1; i < len(kp.sets); i++ {
				if kp.sets[i] > 2*kp.sets[i-1] {
					t.Errorf("step %v → %v beyond maxStep 2", kp.sets[i-1], kp.sets[i])
				}
			}
		}},
		{"adaptive: idle kube-proxy's metrics are left unread until its CPU rises", adaptive(0.1), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			quietUntil := 5 * time.Minute
			s := &fakeSampler{kp: kp, start: b.clock, now: b.a.now, cost: 10 * time.Millisecond,
				busy: func(el time.Duration) bool { return el < 2*time.Second || el > quietUntil }}
			b.a.node.sampler = s
			mp := func() *managed { return b.a.procs[key{pid: 10, start: 1, dev: 1, ino: 110}] }
			for i := 0; i < 30 && (mp() == nil || !mp().idle); i++ {
				b.rounds(1, 2*time.Second)
			}
			if !mp().idle {
				t.Fatal("not idle after a minute without a sync")
			}
			before := s.samples
			b.rounds(25, 2*time.Second) // 50 s of quiet, within maxIdle of the last reading
			if s.samples != before {
				t.Errorf("%d readings of an idle kube-proxy's metrics within %v", s.samples-before, maxIdle)
			}
			b.rounds(10, 2*time.Second) // past maxIdle: read once more, still idle
			if s.samples != before+1 {
				t.Errorf("%d readings of an idle kube-proxy's metrics past %v, want 1", s.samples-before, maxIdle)
			}
			before = s.samples
			b.clock = b.clock.Add(quietUntil) // churn resumes
			b.rounds(3, 2*time.Second)
			if s.samples == before {
				t.Error("kube-proxy busy again, and its metrics not read")
			}
		}},
		{"adaptive after the annotation: a fresh window, nothing read meanwhile", adaptive(0.1), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			s := &fakeSampler{kp: kp, start: b.clock, now: b.a.now, cost: 300 * time.Millisecond}
			b.a.node.sampler = s
			b.rounds(20, 2*time.Second)
			b.node.Annotations[Annotation] = "5s"
			b.rounds(1, 2*time.Second)
			samples, sets := s.samples, len(kp.sets)
			b.rounds(20, 2*time.Second)
			if s.samples != samples || len(kp.sets) != sets || kp.period != 5*time.Second {
				t.Fatalf("under the annotation: %d readings of kube-proxy's metrics, sets %v", s.samples-samples, kp.sets[sets:])
			}
			delete(b.node.Annotations, Annotation)
			b.rounds(7, 2*time.Second) // 14 s: less than a window of three 5s periods
			if s.samples != samples+1 || len(kp.sets) != sets {
				t.Errorf("after the annotation: %d readings, sets %v; want one reading to open a window, no decision before it ends", s.samples-samples, kp.sets[sets:])
			}
		}},
		{"objective: up to the aim under steady churn, down at once when a burst misses it", objectiveConfig(), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			extra := 700 * time.Millisecond // what the latency holds besides the wait for a sync
			s := &fakeSampler{kp: kp, start: b.clock, now: b.a.now, cost: 100 * time.Millisecond,
				latency: func(p time.Duration) time.Duration { return time.Duration(0.99*float64(p)) + extra }}
			b.a.node.sampler = s
			// The first window, from a sample without the histogram, is judged once it holds a period
			// and minChanges changes (10 a second), not after decideEvery.
			// The agent opens the window in its first round; the round 2 s later has 20 changes.
			b.rounds(2, 2*time.Second)
			if len(kp.sets) != 1 || kp.sets[0] != 2*time.Second {
				t.Fatalf("2 s in: sets %v, want [2s] (the first window judged, up by the step from 1s)", kp.sets)
			}
			b.rounds(4, 2*time.Second)
			if len(kp.sets) != 1 {
				t.Fatalf("8 s after the first decision: sets %v; later windows last decideEvery", kp.sets)
			}
			b.rounds(54, 2*time.Second)
			steady := kp.period
			if steady < 5*time.Second || steady > 8*time.Second {
				t.Fatalf("steady churn: settled at %v (sets %v), want near the 8s aim less 0.7 s", steady, kp.sets)
			}
			met := testutil.ToFloat64(b.a.m.objectiveMet.WithLabelValues("10"))
			if met != 1 {
				t.Errorf("kptune_policy_objective_met %v at %v", met, steady)
			}
			extra = 6 * time.Second // a burst: syncs take longer, and the objective is missed
			sets, burst := len(kp.sets), b.clock
			for len(kp.sets) == sets && b.clock.Sub(burst) < time.Minute {
				b.rounds(1, 2*time.Second)
			}
			if took := b.clock.Sub(burst); kp.period >= steady/2 || took > 20*time.Second {
				t.Errorf("after the burst: %v after %v (sets %v); want well under %v within a window", kp.period, took, kp.sets, steady)
			}
			if met, q := testutil.ToFloat64(b.a.m.objectiveMet.WithLabelValues("10")), testutil.ToFloat64(b.a.m.latency.WithLabelValues("10", "0.99")); met != 0 || q < 10 {
				t.Errorf("the burst's window: objective met %v, p99 %v s; want 0 and the missed quantile", met, q)
			}
		}},
		{"objective: busy again after a quiet spell, judged as soon as the window holds the changes", objectiveConfig(), func(t *testing.T, b *bench) {
			kp := b.kubeProxy(10, 1, time.Second)
			extra := 5 * time.Second // slow syncs: the aim allows about 3 s
			resume := 10 * time.Minute
			s := &fakeSampler{kp: kp, start: b.clock, now: b.a.now, cost: 100 * time.Millisecond,
				busy:    func(el time.Duration) bool { return el < 2*time.Minute || el >= resume },
				latency: func(p time.Duration) time.Duration { return time.Duration(0.99*float64(p)) + extra }}
			b.a.node.sampler = s
			mp := func() *managed { return b.a.procs[key{pid: 10, start: 1, dev: 1, ino: 110}] }
			for b.clock.Sub(s.start) < resume {
				b.rounds(1, 2*time.Second)
			}
			held := kp.period
			if held < 2*time.Second || held > 4*time.Second || !mp().idle {
				t.Fatalf("before the quiet spell: %v (sets %v), idle %v; want about 3s, idle", held, kp.sets, mp().idle)
			}
			extra = time.Second // the load comes back with fast syncs: the aim allows about 7 s
			sets := len(kp.sets)
			for len(kp.sets) == sets && b.clock.Sub(s.start) < resume+time.Minute {
				b.rounds(1, 2*time.Second)
			}
			if took := b.clock.Sub(s.start) - resume; len(kp.sets) == sets || kp.period <= held || took >= objectiveConfig().DecideEvery.Duration {
				t.Errorf("busy again: %v after %v (sets %v); want up from %v within decideEvery", kp.period, took, kp.sets, held)
			}
		}},
		{"reset on exit: only what the agent changed", static(3 * time.Second), func(t *testing.T, b *bench) {
			b.a.o.ResetOnExit = true
			changed := b.kubeProxy(10, 1, time.Second)
			untouched := b.kubeProxy(11, 2, 3*time.Second)
			b.rounds(2, 2*time.Second)
			b.a.shutdown()
			if changed.resets != 1 || untouched.resets != 0 || !changed.closed || !untouched.closed {
				t.Errorf("resets %d and %d, closed %v %v", changed.resets, untouched.resets, changed.closed, untouched.closed)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, newBench(t, c.cfg)) })
	}
}

var errRefusedForTest = errors.New("refused")

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
