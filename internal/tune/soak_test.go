package tune

import (
	"context"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/patch"
	"kptune/internal/state"
	"kptune/test/testbed"
)

// soakCycles is how many set/reset cycles TestSoak runs: KPTUNE_SOAK_CYCLES (make soak: 1000), 40
// by default.
func soakCycles() int {
	if n, err := strconv.Atoi(os.Getenv("KPTUNE_SOAK_CYCLES")); err == nil && n > 0 {
		return n
	}
	return 40
}

var (
	counters = regexp.MustCompile(`\[\d+:\d+\]`)
	comments = regexp.MustCompile(`(?m)^#.*\n`)
)

// normalise makes two kube-proxies' rules comparable: no packet counters, no dump comments (they hold
// times), the node's own address as a placeholder, and the lines sorted: two kube-proxies fed the
// same objects write the KUBE-SERVICES rules in different orders (Go's map order), which their
// disjoint matches make equivalent.
func normalise(rules, nodeIP string) string {
	rules = comments.ReplaceAllString(counters.ReplaceAllString(rules, "[0:0]"), "")
	lines := strings.Split(strings.ReplaceAll(rules, nodeIP, "NODE_IP"), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestSoak retunes a real kube-proxy again and again (set to a random valid period, then reset)
// under continuous churn, beside an identical kube-proxy nobody touches. kube-proxy never crashes or
// restarts, none of its syncs fails, and at the end its rules are identical to the untouched one's.
// `make soak` runs 1000 cycles; the default, in `make test`, 40.
func TestSoak(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	const services, endpoints = 100, 5
	o := testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}
	c, kps := testbed.Start(t, services, endpoints, o, o)
	tuned, untouched := kps[0], kps[1]
	pid := tuned.PID()
	failures := func(kp *testbed.KubeProxy) float64 {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Value(kpmetrics.RestoreFailures)
	}
	fail0 := failures(tuned)
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 20, Services: services, Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	store := state.Store{Dir: t.TempDir()}
	cycles := soakCycles()
	rng := rand.New(rand.NewPCG(1, 2))
	var stopped []time.Duration
	start := time.Now()
	for i := range cycles {
		d := time.Duration(1001+rng.IntN(9000)) * time.Millisecond // (1s, 10s]: never the period it has, which writes nothing
		res, err := Set(ctx, Options{PID: pid, Change: patch.Change{MinInterval: &d}, Store: store, Log: quiet()})
		if err != nil {
			t.Fatalf("cycle %d: set %v: %v", i, d, err)
		}
		stopped = append(stopped, time.Duration(res.Processes[0].StoppedNS))
		if _, err := Reset(ctx, Options{PID: pid, Store: store, Log: quiet()}); err != nil {
			t.Fatalf("cycle %d: reset: %v", i, err)
		}
		if !tuned.Running() || tuned.PID() != pid {
			t.Fatalf("cycle %d: kube-proxy is gone", i)
		}
	}
	elapsed := time.Since(start)
	changes, err := churn.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if f := failures(tuned); f != fail0 {
		t.Errorf("iptables-restore failures went from %v to %v", fail0, f)
	}
	// Both sync what is still queued within a period or two (1s): compare until they agree, for at
	// most 15 s.
	var a, na, nb string
	for deadline := time.Now().Add(15 * time.Second); ; {
		time.Sleep(2 * time.Second)
		if a, err = tuned.Rules(); err != nil {
			t.Fatal(err)
		}
		b, err := untouched.Rules()
		if err != nil {
			t.Fatal(err)
		}
		na, nb = normalise(a, tuned.IP), normalise(b, untouched.IP)
		if na == nb || time.Now().After(deadline) {
			break
		}
	}
	if na != nb {
		la, lb := strings.Split(na, "\n"), strings.Split(nb, "\n")
		for i := range min(len(la), len(lb)) {
			if la[i] != lb[i] {
				t.Fatalf("rules differ at line %d of %d/%d:\n  tuned:     %s\n  untouched: %s", i, len(la), len(lb), la[i], lb[i])
			}
		}
		t.Fatalf("rules differ in length: %d and %d lines", len(la), len(lb))
	}
	if missing := testbed.MissingServices(a, services); len(missing) > 0 {
		t.Errorf("%d Services missing from the rules", len(missing))
	}
	t.Logf("%d set/reset cycles in %v under %d changes, stop p50 %v p99 %v max %v; kube-proxy pid %d never restarted, no failed sync, %d identical rule lines",
		cycles, elapsed.Round(time.Second), changes, percentile(stopped, 50), percentile(stopped, 99), percentile(stopped, 100), pid, strings.Count(na, "\n"))
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}
