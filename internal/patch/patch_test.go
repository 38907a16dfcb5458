package patch

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

func needRoot(t *testing.T) {
	t.Helper()
	testbed.NeedRoot(t, "writing another process's memory needs CAP_SYS_PTRACE")
}

type live struct {
	fx     *testbed.FixtureProcess
	target Target
	found  locate.Found
}

func start(t *testing.T, build testbed.Build, fixture string, period time.Duration) live {
	t.Helper()
	ctx := context.Background()
	bin, err := build.Fixture(ctx, fixture)
	if err != nil {
		t.Fatal(err)
	}
	fx, err := testbed.StartFixture(ctx, bin, "-min-sync-period", period.String(), "-trigger-rate", "20")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.Stop)
	b, err := gobin.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	lt, err := locate.TargetOf(fx.PID, b)
	if err != nil {
		t.Fatal(err)
	}
	found, err := locate.Scan(context.Background(), lt)
	if err != nil || len(found) != 1 {
		t.Fatalf("found %d runners: %v", len(found), err)
	}
	p, err := procfs.Get(fx.PID)
	if err != nil {
		t.Fatal(err)
	}
	dev, ino, err := procfs.ExeID(fx.PID)
	if err != nil {
		t.Fatal(err)
	}
	return live{fx: fx, found: found[0], target: Target{PID: fx.PID, StartTime: p.StartTime, ExeDev: dev, ExeIno: ino, Locate: lt, Mem: memory.Process{PID: fx.PID}}}
}

// tuned reads the raw bytes of the fields a retune writes.
func tuned(t *testing.T, l live) map[string][]byte {
	t.Helper()
	f, lay := l.found, l.target.Locate.Layout
	fields := map[string][2]uint64{"minInterval": {f.Address + lay.MinInterval, 8}}
	if lay.Generation == layout.Async {
		fields["qps"] = [2]uint64{f.QPSAddr, 4}
		fields["limit"] = [2]uint64{f.LimitAddr + lay.RateLimit, 8}
		fields["burst"] = [2]uint64{f.LimitAddr + lay.RateBurst, 8}
	} else {
		fields["retryInterval"] = [2]uint64{f.Address + lay.RetryInterval, 8}
		fields["maxInterval"] = [2]uint64{f.Address + lay.MaxInterval, 8}
	}
	out := map[string][]byte{}
	for name, fa := range fields {
		b := make([]byte, fa[1])
		if err := l.target.Locate.Mem.ReadMem(b, fa[0]); err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// TestIdenticalToRestart: a runner started at 1s and set to 7s holds the same bytes in every tuned
// field as one started at 7s, on both generations; the runner then paces its runs by the new period.
func TestIdenticalToRestart(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		build   testbed.Build
		fixture string
	}{
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner},
		{testbed.Build{Version: "v1.33.5", PIE: true}, testbed.AsyncRunner},
		{testbed.Build{Version: "v1.37.2"}, testbed.ProxyRunner},
	} {
		t.Run(tc.build.String(), func(t *testing.T) {
			const to = 7 * time.Second
			a := start(t, tc.build, tc.fixture, time.Second)
			b := start(t, tc.build, tc.fixture, to)
			d := to
			_, ws, err := Plan(a.found, a.target.Locate.Layout, Change{MinInterval: &d})
			if err != nil {
				t.Fatal(err)
			}
			st, err := Apply(a.target, []RunnerWrites{{Found: a.found, Writes: ws}})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %d fields, %d threads stopped for %v", len(ws), st.Threads, st.Stopped)
			ta, tb := tuned(t, a), tuned(t, b)
			for name, want := range tb {
				if !bytes.Equal(ta[name], want) {
					t.Errorf("%s: set to %v holds %x, started at %v holds %x", name, to, ta[name], to, want)
				}
			}
			// Paced by the new period: no more than the burst runs in the next 3 seconds.
			before := len(a.fx.Runs())
			time.Sleep(3 * time.Second)
			if n := len(a.fx.Runs()) - before; n > 2 {
				t.Errorf("%d runs in 3s after setting %v", n, to)
			}
		})
	}
}

func TestApplyRefusesAnotherProcess(t *testing.T) {
	needRoot(t)
	l := start(t, testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, time.Second)
	d := 5 * time.Second
	_, ws, err := Plan(l.found, l.target.Locate.Layout, Change{MinInterval: &d})
	if err != nil {
		t.Fatal(err)
	}
	before := tuned(t, l)

	restarted := l.target
	restarted.StartTime++
	if _, err := Apply(restarted, []RunnerWrites{{Found: l.found, Writes: ws}}); err == nil || !strings.Contains(err.Error(), "no longer the process") {
		t.Errorf("a restarted process: got %v", err)
	}
	changed := l.found
	changed.MinInterval = 2 * time.Second
	if _, err := Apply(l.target, []RunnerWrites{{Found: changed, Writes: ws}}); err == nil || !strings.Contains(err.Error(), "changed since it was read") {
		t.Errorf("a runner changed since it was read: got %v", err)
	}
	stale := append([]Write(nil), ws...)
	stale[0].Old = []byte{1, 2, 3, 4, 5, 6, 7, 8}
	if _, err := Apply(l.target, []RunnerWrites{{Found: l.found, Writes: stale}}); err == nil || !strings.Contains(err.Error(), "nothing written") {
		t.Errorf("a field that differs from the plan: got %v", err)
	}
	after := tuned(t, l)
	for name := range before {
		if !bytes.Equal(before[name], after[name]) {
			t.Errorf("%s changed by a refused write: %x → %x", name, before[name], after[name])
		}
	}
}

// lockedLimiter is a process's memory in which the rate limiter's mutex reads as held for the first
// stops reads of it.
type lockedLimiter struct {
	memory.ReadWriter
	mu    uint64
	stops int
	reads int
}

func (m *lockedLimiter) ReadMem(b []byte, addr uint64) error {
	if err := m.ReadWriter.ReadMem(b, addr); err != nil {
		return err
	}
	if addr == m.mu {
		m.reads++
		if m.reads <= m.stops {
			b[0] |= 1
		}
	}
	return nil
}

// TestApplyWaitsForUnlockedLimiter: a stop that finds a thread holding the rate limiter's lock
// (which would store tokens computed at the old rate over the new ones) writes nothing and releases
// the process; the write is made in a later stop once it is free, or not at all.
func TestApplyWaitsForUnlockedLimiter(t *testing.T) {
	needRoot(t)
	l := start(t, testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, time.Second)
	lay := l.target.Locate.Layout
	if !lay.RateMuKnown {
		t.Fatal("the layout from type descriptors does not place the rate limiter's mutex")
	}
	// The live word is a sync.Mutex's state: no waiter count beyond a few, and held (bit 0) at
	// most for an instant.
	var state [4]byte
	held := 0
	for range 200 {
		if err := l.target.Mem.ReadMem(state[:], l.found.LimitAddr+lay.RateMu); err != nil {
			t.Fatal(err)
		}
		if v := binary.LittleEndian.Uint32(state[:]); v > 1<<10 {
			t.Fatalf("the rate limiter's mutex reads %#x: not a mutex's state", v)
		} else if v&1 != 0 {
			held++
		}
	}
	if held > 20 {
		t.Errorf("the rate limiter's mutex read as held %d times in 200", held)
	}
	d := 5 * time.Second
	_, ws, err := Plan(l.found, lay, Change{MinInterval: &d})
	if err != nil {
		t.Fatal(err)
	}
	before := tuned(t, l)

	always := l.target
	always.Mem = &lockedLimiter{ReadWriter: l.target.Mem, mu: l.found.LimitAddr + lay.RateMu, stops: busyStops}
	a, err := Apply(always, []RunnerWrites{{Found: l.found, Writes: ws}})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "nothing written") || a.Busy != busyStops-1 || a.Written != nil {
		t.Errorf("a limiter locked at every stop: %v (busy %d, written %v)", err, a.Busy, a.Written)
	}
	after := tuned(t, l)
	for name := range before {
		if !bytes.Equal(before[name], after[name]) {
			t.Errorf("%s changed while the limiter was locked: %x → %x", name, before[name], after[name])
		}
	}

	twice := l.target
	twice.Mem = &lockedLimiter{ReadWriter: l.target.Mem, mu: l.found.LimitAddr + lay.RateMu, stops: 2}
	a, err = Apply(twice, []RunnerWrites{{Found: l.found, Writes: ws}})
	if err != nil || a.Busy != 2 || len(a.Written) != 1 {
		t.Fatalf("a limiter locked at two stops: %v (busy %d, written %v)", err, a.Busy, a.Written)
	}
	if got := tuned(t, l)["minInterval"]; binary.LittleEndian.Uint64(got) != uint64(d) {
		t.Errorf("minInterval %x after the third stop, want %v", got, d)
	}
}

func TestPlanRefusals(t *testing.T) {
	old := locate.Found{Address: 0x1000, MinInterval: time.Second, MaxInterval: time.Hour, QPS: 1, Limit: 1, Burst: 2, LimitAddr: 0x2000, QPSAddr: 0x3008, Patchable: true}
	cur := locate.Found{Address: 0x1000, MinInterval: time.Second, MaxInterval: time.Hour, RetryInterval: 30 * time.Second, Patchable: true}
	asyncL, runnerL := layout.Builtin(layout.Async), layout.Builtin(layout.Runner)
	dur := func(d time.Duration) *time.Duration { return &d }
	n := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		f    locate.Found
		l    layout.Layout
		c    Change
		want string
	}{
		{old, asyncL, Change{MinInterval: dur(-time.Second)}, "negative"},
		{old, asyncL, Change{MinInterval: dur(0)}, "no-op"},
		{old, asyncL, Change{MinInterval: dur(2 * time.Hour)}, "maximum interval"},
		{old, asyncL, Change{RetryInterval: dur(time.Second)}, "k8s ≥ 1.34"},
		{old, asyncL, Change{Burst: n(0)}, "between 1 and 1000"},
		{cur, runnerL, Change{Burst: n(3)}, "k8s ≤ 1.33"},
		{cur, runnerL, Change{RetryInterval: dur(0)}, "positive"},
		{locate.Found{Reason: "no-op limiter"}, asyncL, Change{MinInterval: dur(time.Second)}, "no-op limiter"},
	} {
		if _, _, err := Plan(tc.f, tc.l, tc.c); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want a refusal saying %q", tc.c, err, tc.want)
		}
	}
	// What the constructor computes, bit for bit.
	v, ws, err := Plan(old, asyncL, Change{MinInterval: dur(3700 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if v.QPS != float32(time.Second)/float32(3700*time.Millisecond) || v.Limit != float64(v.QPS) || len(ws) != 4 || ws[3].Field != "tokens" || ws[3].Adjust == nil {
		t.Errorf("plan for 3.7s: %+v, %d writes", v, len(ws))
	}
	// Lowered, the period needs no adjustment of the bucket; nor can one be made without its offset.
	faster := old
	faster.MinInterval, faster.QPS, faster.Limit = 5*time.Second, 0.2, float64(float32(0.2))
	if _, ws, _ := Plan(faster, asyncL, Change{MinInterval: dur(time.Second)}); len(ws) != 3 {
		t.Errorf("plan from 5s to 1s: %d writes, want 3 (no tokens)", len(ws))
	}
	noTokens := asyncL
	noTokens.RateTokens = 0
	if _, ws, _ := Plan(old, noTokens, Change{MinInterval: dur(3700 * time.Millisecond)}); len(ws) != 3 {
		t.Errorf("plan without the tokens' offset: %d writes, want 3", len(ws))
	}
	if _, ws, _ := Plan(old, asyncL, Change{MinInterval: dur(time.Second)}); len(ws) != 0 {
		t.Errorf("setting the current value plans %d writes", len(ws))
	}
}

// TestKeepNextRun: raised, the period leaves the bucket's next token when it was due, and a credit
// beyond a token as the same time at the new rate; a bucket holding what no bucket holds is refused.
func TestKeepNextRun(t *testing.T) {
	adjust := keepNextRun(1, 0.125, 2)
	f64 := func(v float64) []byte { return binary.LittleEndian.AppendUint64(nil, math.Float64bits(v)) }
	for _, c := range []struct {
		tokens float64
		want   float64 // NaN: refused
	}{
		{0, 0.875},        // due 1 s after the last run: 1 − 0.875 = 0.125 = 1 s at 0.125/s
		{0.6, 0.95},       // due 0.4 s after
		{1, 1},            // a run is allowed now, and no more
		{2, 1.125},        // a full bucket: a run now, and the next 1 s sooner than the new period (as at the old rate)
		{2.5, math.NaN()}, // above the burst
		{-0.1, math.NaN()},
		{math.NaN(), math.NaN()},
		{math.Inf(1), math.NaN()},
	} {
		got, err := adjust(f64(c.tokens))
		switch {
		case math.IsNaN(c.want):
			if err == nil || !errors.Is(err, locate.ErrStale) {
				t.Errorf("tokens %v: %x, %v; want refused", c.tokens, got, err)
			}
		default:
			if err != nil || math.Abs(math.Float64frombits(binary.LittleEndian.Uint64(got))-c.want) > 1e-12 {
				t.Errorf("tokens %v: %x, %v; want %v", c.tokens, got, err, c.want)
			}
		}
	}
}

// TestNoSpinAfterRaise: a runner under triggers, raised from 1s to 7s, spends no CPU to speak of
// until its next run. Without the bucket's adjustment (the control) the k8s ≤ 1.33 runner's timer,
// armed under the old period, fires while the limiter refuses, and it spins a core until the limiter
// allows. (The k8s ≥ 1.34 runner has no limiter: it waits out the old period.)
func TestNoSpinAfterRaise(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		build   testbed.Build
		fixture string
		control bool
	}{
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, false},
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, true},
		{testbed.Build{Version: "v1.37.2"}, testbed.ProxyRunner, false},
	} {
		control := tc.control
		l := start(t, tc.build, tc.fixture, time.Second)
		time.Sleep(3 * time.Second)
		d := 7 * time.Second
		_, ws, err := Plan(l.found, l.target.Locate.Layout, Change{MinInterval: &d})
		if err != nil {
			t.Fatal(err)
		}
		if control {
			ws = slices.DeleteFunc(ws, func(w Write) bool { return w.Field == "tokens" })
		}
		c0, err := procfs.CPU(l.fx.PID)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		applied, err := Apply(l.target, []RunnerWrites{{Found: l.found, Writes: ws}})
		if err != nil {
			t.Fatal(err)
		}
		// A raise on the old generation sets the bucket's tokens, and Applied says so with the
		// value computed in the stop (in [0, burst]; under its triggers, short of one but for the
		// instant a run is due).
		if i := slices.IndexFunc(applied.Written[0], func(w Write) bool { return w.Field == "tokens" }); tc.fixture == testbed.AsyncRunner && !control {
			if i < 0 || applied.Written[0][i].Adjust != nil || len(applied.Written[0][i].New) != 8 {
				t.Errorf("%s: the tokens write is not among those Apply made: %+v", tc.build, applied.Written)
			} else if v := math.Float64frombits(binary.LittleEndian.Uint64(applied.Written[0][i].New)); !(v >= 0 && v <= 2) {
				t.Errorf("%s: tokens set to %v", tc.build, v)
			}
		} else if i >= 0 {
			t.Errorf("%s, control %v: a tokens write was made: %+v", tc.build, control, applied.Written)
		}
		time.Sleep(4 * time.Second)
		c1, err := procfs.CPU(l.fx.PID)
		if err != nil {
			t.Fatal(err)
		}
		cores := (c1 - c0).Seconds() / time.Since(t0).Seconds()
		t.Logf("%s, control %v: %.3f cores over the 4 s after the write", tc.build, control, cores)
		if !control && cores > 0.1 {
			t.Errorf("%s raised to 7s: the runner spent %.3f cores before its next run", tc.build, cores)
		}
		if control && cores < 0.5 {
			t.Errorf("the control (no adjustment of the bucket) spent %.3f cores: the test no longer sees the spin it guards against", cores)
		}
		l.fx.Stop()
	}
}
