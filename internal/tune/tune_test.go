package tune

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"kptune/internal/freeze"
	"kptune/internal/kpmetrics"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/patch"
	uprobe "kptune/internal/probe"
	"kptune/internal/state"
	"kptune/internal/target"
	"kptune/test/testbed"
)

func needRoot(t *testing.T) {
	t.Helper()
	testbed.NeedRoot(t, "network namespaces, iptables and ptrace")
}

// locateHeld opens and locates kube-proxy pid by the memory scan, as the agent holds it; its
// executable is closed when the test ends.
func locateHeld(tb testing.TB, pid int) *target.Process {
	tb.Helper()
	ctx := context.Background()
	p, err := target.Open(ctx, pid)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	if err := p.Locate(ctx, target.LocateOptions{Locator: target.ByScan}); err != nil {
		tb.Fatal(err)
	}
	return p
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestSetOnRealKubeProxy is `kptune set` and `reset` end to end on real kube-proxy of both runner
// generations, fed by the real API server under continuous EndpointSlice churn:
//   - identical to a restart: A started at 1s and set to 7s holds the same tuned fields as B started
//     at 7s;
//   - it works: syncs per minute follow the period (1s → 10s cuts them by 5× or more) and reset
//     brings them back, with no failed sync and every Service still in the rules;
//   - one writer at a time, and a clear error for a PID that does not exist.
func TestSetOnRealKubeProxy(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	c, err := testbed.Up(ctx, testbed.ClusterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Down() })
	const services, endpoints = 60, 4
	if err := c.Load(ctx, services, endpoints); err != nil {
		t.Fatal(err)
	}
	store := state.Store{Dir: t.TempDir()}
	type pair struct{ a, b *testbed.KubeProxy }
	var pairs []pair
	for _, build := range []testbed.Build{{Version: "v1.33.5"}, {Version: "v1.37.2"}} {
		var p pair
		for i, period := range []time.Duration{time.Second, 7 * time.Second} {
			kp, err := c.StartKubeProxy(ctx, testbed.KubeProxyOptions{Build: build, Mode: testbed.IPTables, MinSyncPeriod: period, SyncPeriod: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				p.a = kp
			} else {
				p.b = kp
			}
		}
		pairs = append(pairs, p)
	}
	for _, p := range pairs {
		for _, kp := range []*testbed.KubeProxy{p.a, p.b} {
			if err := kp.WaitSynced(ctx, 1, 90*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("identical to a restart", func(t *testing.T) {
		for _, p := range pairs {
			d := 7 * time.Second
			res, err := Set(ctx, Options{PID: p.a.PID(), Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: stopped %d threads for %s, total %s", p.a.Options.Build, res.Processes[0].Threads, res.Processes[0].Stopped, res.Processes[0].Total)
			fa, fb := fields(t, p.a.PID()), fields(t, p.b.PID())
			if !bytes.Equal(fa, fb) {
				t.Errorf("%s: set to 7s holds %x, started at 7s holds %x", p.a.Options.Build, fa, fb)
			}
			if _, err := Reset(ctx, Options{PID: p.a.PID(), Store: store, Log: quiet()}); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("a kube-proxy located by its caller is written without a second scan", func(t *testing.T) {
		for _, p := range pairs {
			pid := p.a.PID()
			held := locateHeld(t, pid)
			d := 7 * time.Second
			res, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet(), Target: held})
			if err != nil {
				t.Fatal(err)
			}
			if by := res.Processes[0].Locator; by != "kept" {
				t.Errorf("%s: located by %q, want the caller's (kept)", p.a.Options.Build, by)
			}
			if fa, fb := fields(t, pid), fields(t, p.b.PID()); !bytes.Equal(fa, fb) {
				t.Errorf("%s: set to 7s through a located process holds %x, started at 7s holds %x", p.a.Options.Build, fa, fb)
			}
			// A runner that changes after it was read (here written behind kptune's back, between
			// the plan and the stop): found inside the stop, refused, nothing written.
			five, six := 5*time.Second, 6*time.Second
			behind := func(step string) {
				if step == "recorded" {
					f := held.Runners()[0]
					var b [8]byte
					binary.LittleEndian.PutUint64(b[:], uint64(six))
					if err := (memory.Process{PID: pid}).WriteMem(b[:], f.Address+held.Layout().MinInterval); err != nil {
						t.Error(err)
					}
				}
			}
			_, err = Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &five}, Store: store, Log: quiet(), Target: held, Pause: behind})
			if !errors.Is(err, target.ErrStale) || !strings.Contains(err.Error(), "changed since it was read") {
				t.Errorf("%s: a runner changed after it was read: %v, want its change found inside the stop", p.a.Options.Build, err)
			}
			if got := fieldsMin(t, pid); got != six {
				t.Errorf("%s: after the refused write it holds %v, want the 6s written behind kptune", p.a.Options.Build, got)
			}
			// Held, it is read again for the next write: no stale plan.
			if _, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet(), Target: held}); err != nil {
				t.Errorf("%s: a held kube-proxy after a refused write: %v", p.a.Options.Build, err)
			}
			other := *held
			other.ExeIno++
			if _, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &five}, Store: store, Log: quiet(), Target: &other}); !errors.Is(err, target.ErrStale) || !strings.Contains(err.Error(), "another executable") {
				t.Errorf("%s: a located process of another executable: %v", p.a.Options.Build, err)
			}
			if got := fieldsMin(t, pid); got != 7*time.Second {
				t.Errorf("%s: after the refused writes it holds %v, want 7s", p.a.Options.Build, got)
			}
			if _, err := Reset(ctx, Options{PID: pid, Store: store, Log: quiet()}); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("syncs follow the period", func(t *testing.T) {
		churn, err := c.Churn(ctx, ChurnOptions(services, endpoints))
		if err != nil {
			t.Fatal(err)
		}
		defer churn.Stop()
		kps := []*testbed.KubeProxy{pairs[0].a, pairs[1].a}
		failures := func(kp *testbed.KubeProxy) float64 {
			s, err := kp.Metrics.Scrape(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return s.Value(kpmetrics.RestoreFailures)
		}
		fail0 := []float64{failures(kps[0]), failures(kps[1])}
		time.Sleep(3 * time.Second)
		before := rates(t, kps, 20*time.Second)
		ten := 10 * time.Second
		// Located by the uprobe alone, end to end.
		byUprobe := target.LocateOptions{Locator: target.ByUprobe, Probe: uprobe.Options{Timeout: 20 * time.Second, Settle: 500 * time.Millisecond}}
		for _, kp := range kps {
			res, err := Set(ctx, Options{PID: kp.PID(), Change: patch.Change{MinInterval: &ten}, Store: store, Log: quiet(), Locate: byUprobe})
			if err != nil {
				t.Fatal(err)
			}
			if by := res.Processes[0].Locator; by != string(target.ByUprobe) {
				t.Errorf("%s: located by %q, want uprobe", kp.Options.Build, by)
			}
		}
		time.Sleep(12 * time.Second) // the bucket's stored burst drains
		during := rates(t, kps, 40*time.Second)
		for _, kp := range kps {
			if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err != nil {
				t.Fatal(err)
			}
		}
		// The ≥ 1.34 runner finishes the 10s wait in progress before it reads the new period.
		time.Sleep(11 * time.Second)
		after := rates(t, kps, 20*time.Second)
		for i, kp := range kps {
			t.Logf("%s: %.1f syncs/min at 1s, %.1f at 10s, %.1f after reset", kp.Options.Build, before[i], during[i], after[i])
			if during[i]*5 > before[i] {
				t.Errorf("%s: 1s → 10s took syncs/min from %.1f to %.1f, less than a 5× cut", kp.Options.Build, before[i], during[i])
			}
			if after[i] < before[i]*0.7 {
				t.Errorf("%s: after reset %.1f syncs/min, before %.1f", kp.Options.Build, after[i], before[i])
			}
			if f := failures(kp); f != fail0[i] {
				t.Errorf("%s: restore failures went %v → %v", kp.Options.Build, fail0[i], f)
			}
			if !kp.Running() {
				t.Errorf("%s exited", kp.Options.Build)
			}
		}
		if _, err := churn.Stop(); err != nil {
			t.Fatal(err)
		}
		for _, kp := range kps {
			deadline := time.Now().Add(30 * time.Second)
			for {
				rules, err := kp.Rules()
				if err != nil {
					t.Fatal(err)
				}
				missing := testbed.MissingServices(rules, services)
				if len(missing) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d Services missing from the rules", kp.Options.Build, len(missing))
				}
				time.Sleep(time.Second)
			}
		}
	})

	t.Run("one writer at a time", func(t *testing.T) {
		kp := pairs[0].a
		d := 2 * time.Second
		var wg sync.WaitGroup
		wg.Add(1)
		var holdErr error
		go func() {
			defer wg.Done()
			_, holdErr = Set(ctx, Options{PID: kp.PID(), Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet(),
				Pause: func(step string) {
					if step == "written" {
						time.Sleep(2 * time.Second)
					}
				}})
		}()
		time.Sleep(800 * time.Millisecond)
		_, err := Set(ctx, Options{PID: kp.PID(), Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet()})
		wg.Wait()
		if holdErr != nil {
			t.Fatal(holdErr)
		}
		if err == nil || !strings.Contains(err.Error(), "another kptune is writing") {
			t.Errorf("a second writer: got %v", err)
		}
		if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err != nil {
			t.Fatal(err)
		}
		if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err == nil || !strings.Contains(err.Error(), "nothing to reset") {
			t.Errorf("a second reset: got %v", err)
		}
	})

	t.Run("kptune killed at every step of a write", func(t *testing.T) {
		kp := pairs[1].a
		bin, err := testbed.Kptune()
		if err != nil {
			t.Fatal(err)
		}
		current := func() locate.Found {
			found, err := target.Runners(ctx, kp.PID())
			if err != nil {
				t.Fatal(err)
			}
			return found[0]
		}
		steps := []string{"locked", "located", "recorded", "checked", "written", "released"}
		periods := []time.Duration{3 * time.Second, 4 * time.Second}
		for round := 0; round < 2; round++ {
			for _, step := range steps {
				before := current().MinInterval
				want := periods[round]
				if want == before {
					want += time.Second
				}
				cmd := exec.Command(bin, "set", "--pid", strconv.Itoa(kp.PID()), "--min-sync-period", want.String(),
					"--fault-pause", step, "--state-dir", store.Dir)
				var stderr syncBuffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(20 * time.Second)
				for !strings.Contains(stderr.String(), "paused at "+step) {
					if time.Now().After(deadline) {
						_ = cmd.Process.Kill()
						_ = cmd.Wait()
						t.Fatalf("kptune never reached %s: %s", step, stderr.String())
					}
					time.Sleep(5 * time.Millisecond)
				}
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				time.Sleep(100 * time.Millisecond)
				if tp, err := freeze.TracerPID(kp.PID()); tp != 0 || err != nil {
					t.Fatalf("killed at %s: TracerPid %d (%v)", step, tp, err)
				}
				st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", kp.PID()))
				if err != nil || strings.Contains(string(st), "State:\tt") || strings.Contains(string(st), "State:\tT") {
					t.Fatalf("killed at %s: kube-proxy left stopped (%v)", step, err)
				}
				// Never half a change: the runner holds the old period or the new, with its qps.
				f := current()
				landed := step == "written" || step == "released"
				if (landed && f.MinInterval != want) || (!landed && f.MinInterval != before) || !f.Patchable || f.Reason != "" {
					t.Fatalf("killed at %s: runner holds %v (qps %v, %s); want %v", step, f.MinInterval, f.QPS, f.Reason, map[bool]time.Duration{true: want, false: before}[landed])
				}
			}
		}
		// It still syncs: a change reaches its rules.
		before, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		churn, err := c.Churn(ctx, ChurnOptions(services, endpoints))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(12 * time.Second)
		if _, err := churn.Stop(); err != nil {
			t.Fatal(err)
		}
		after, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.Syncs() <= before.Syncs() || !kp.Running() {
			t.Fatalf("kube-proxy did not sync after kptune was killed (%d → %d syncs)", before.Syncs(), after.Syncs())
		}
		// Writes landed where kptune was killed after them; reset restores the original period from
		// the record.
		if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		d := time.Second
		if _, err := Set(ctx, Options{PID: 999999999, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet()}); err == nil || !strings.Contains(err.Error(), "no process") {
			t.Errorf("missing pid: %v", err)
		}
		far := 45 * time.Second
		_, err := Set(ctx, Options{PID: pairs[0].a.PID(), Change: patch.Change{MinInterval: &far}, Store: store, Log: quiet()})
		if !errors.Is(err, patch.ErrRefused) || !strings.Contains(err.Error(), "--force") {
			t.Errorf("a period past syncPeriod: %v", err)
		}
	})

	t.Run("a corrupt or missing state record", func(t *testing.T) {
		kp := pairs[0].b
		d := 5 * time.Second
		if _, err := Set(ctx, Options{PID: kp.PID(), Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet()}); err != nil {
			t.Fatal(err)
		}
		records, _ := filepath.Glob(filepath.Join(store.Dir, "records", fmt.Sprintf("%d-*.json", kp.PID())))
		if len(records) != 1 {
			t.Fatalf("records %v", records)
		}
		good, err := os.ReadFile(records[0])
		if err != nil {
			t.Fatal(err)
		}
		var rec state.Record
		if err := json.Unmarshal(good, &rec); err != nil {
			t.Fatal(err)
		}
		for a, o := range rec.Runners {
			o.MinInterval = -time.Second // a value no kube-proxy starts with
			rec.Runners[a] = o
		}
		negative, _ := json.Marshal(rec)
		for _, bad := range []string{`{"pid":`, string(negative)} {
			if err := os.WriteFile(records[0], []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err == nil || !strings.Contains(err.Error(), "is corrupt") {
				t.Errorf("reset from a corrupt record: %v", err)
			}
			if got := fieldsMin(t, kp.PID()); got != d {
				t.Errorf("a refused reset changed the period to %v", got)
			}
		}
		// A record is input: one that would restore a period above syncPeriod (30s) passes the
		// record's own checks, and the rails a set passes refuse it.
		for a, o := range rec.Runners {
			o.MinInterval = 45 * time.Second
			rec.Runners[a] = o
		}
		long, _ := json.Marshal(rec)
		if err := os.WriteFile(records[0], long, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); !errors.Is(err, patch.ErrRefused) || !strings.Contains(err.Error(), "syncPeriod") {
			t.Errorf("reset to a recorded 45s, above syncPeriod: %v", err)
		}
		if got := fieldsMin(t, kp.PID()); got != d {
			t.Errorf("a refused reset changed the period to %v", got)
		}
		// Every write is in the audit log twice: its intent, before the stop, and its result.
		audit, err := os.ReadFile(filepath.Join(store.Dir, "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		var intents, done int
		for _, line := range strings.Split(strings.TrimSpace(string(audit)), "\n") {
			var e state.AuditEntry
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			if e.PID == kp.PID() && e.Phase == "intent" {
				intents++
			} else if e.PID == kp.PID() && e.Phase == "done" {
				done++
			}
		}
		if intents == 0 || intents != done {
			t.Errorf("audit log: %d intents, %d results for pid %d", intents, done, kp.PID())
		}
		if err := os.Remove(records[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := Reset(ctx, Options{PID: kp.PID(), Store: store, Log: quiet()}); err == nil || !strings.Contains(err.Error(), "nothing to reset") {
			t.Errorf("reset without a record: %v", err)
		}
		seven := 7 * time.Second
		if _, err := Set(ctx, Options{PID: kp.PID(), Change: patch.Change{MinInterval: &seven}, Store: store, Log: quiet()}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("kube-proxy restarted between locate and write", func(t *testing.T) {
		kp := pairs[1].b
		bin, err := testbed.Kptune()
		if err != nil {
			t.Fatal(err)
		}
		old := kp.PID()
		cmd := exec.Command(bin, "set", "--pid", strconv.Itoa(old), "--min-sync-period", "3s", "--fault-pause", "located:5s", "--state-dir", store.Dir)
		var stderr, stdout syncBuffer
		cmd.Stderr, cmd.Stdout = &stderr, &stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for !strings.Contains(stderr.String(), "paused at located") {
			time.Sleep(5 * time.Millisecond)
		}
		if err := kp.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := kp.WaitSynced(ctx, 1, time.Minute); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		msg := strings.TrimSpace(stderr.String())
		if err == nil || !strings.Contains(msg, "exited before the write: nothing written") {
			t.Fatalf("set across a restart: %v: %s (stdout %s)", err, msg, stdout.String())
		}
		found, err := target.Runners(ctx, kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		if got := found[0].MinInterval; got != 7*time.Second {
			t.Errorf("the restarted kube-proxy (pid %d, was %d) holds %v, want its own 7s", kp.PID(), old, got)
		}
		t.Logf("refused: %s", msg[strings.LastIndex(msg, "\n")+1:])
	})
}

// fieldsMin reads the minInterval of the first runner of pid.
func fieldsMin(t *testing.T, pid int) time.Duration {
	t.Helper()
	found, err := target.Runners(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	return found[0].MinInterval
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ChurnOptions is the steady churn the test runs under: 20 changes a second.
func ChurnOptions(services, endpoints int) testbed.ChurnOptions {
	return testbed.ChurnOptions{Rate: 20, Services: services, Endpoints: endpoints}
}

// fields reads the raw bytes of the tuned fields of every runner of pid, concatenated: minInterval,
// and qps, limit, burst (k8s ≤ 1.33) or retryInterval (k8s ≥ 1.34).
func fields(t *testing.T, pid int) []byte {
	t.Helper()
	p, err := target.Open(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	lt, err := locate.TargetOf(pid, p.Binary())
	if err != nil {
		t.Fatal(err)
	}
	found, err := locate.Scan(context.Background(), lt)
	if err != nil || len(found) == 0 {
		t.Fatalf("pid %d: %d runners: %v", pid, len(found), err)
	}
	l := lt.Layout
	var out []byte
	read := func(addr uint64, n int) {
		buf := make([]byte, n)
		if err := lt.Mem.ReadMem(buf, addr); err != nil {
			t.Fatal(err)
		}
		out = append(out, buf...)
	}
	for _, f := range found {
		read(f.Address+l.MinInterval, 8)
		if l.Generation == layout.Runner {
			read(f.Address+l.RetryInterval, 8)
			continue
		}
		read(f.QPSAddr, 4)
		read(f.LimitAddr+l.RateLimit, 8)
		read(f.LimitAddr+l.RateBurst, 8)
	}
	return out
}

// rates measures each kube-proxy's syncs per minute over a window.
func rates(t *testing.T, kps []*testbed.KubeProxy, window time.Duration) []float64 {
	t.Helper()
	ctx := context.Background()
	first := make([]kpmetrics.Snapshot, len(kps))
	for i, kp := range kps {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first[i] = s
	}
	time.Sleep(window)
	out := make([]float64, len(kps))
	for i, kp := range kps {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = float64(s.Syncs()-first[i].Syncs()) / s.Time.Sub(first[i].Time).Minutes()
	}
	return out
}
