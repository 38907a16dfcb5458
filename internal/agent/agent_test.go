package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"kptune/internal/netns"
	"kptune/internal/policy"
	"kptune/internal/procfs"
	"kptune/internal/target"
	"kptune/test/testbed"
)

func TestConfig(t *testing.T) {
	c, err := ParseConfig([]byte("policy: adaptive\nbudget: 0.3\nfloor: 2s\nceiling: 20s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.PolicyName != "adaptive" || c.Budget != 0.3 || c.Floor.Duration != 2*time.Second || c.MaxStep != 2 {
		t.Errorf("parsed %+v", c)
	}
	if c, err := ParseConfig(nil); err != nil || c.PolicyName != "static" || c.MinSyncPeriod.Duration != time.Second {
		t.Errorf("an empty file: %+v, %v", c, err)
	}
	c, err = ParseConfig([]byte("policy: objective\nlatencyObjective: 5s\nlatencyQuantile: 0.9\nprefer: budget\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := c.Build()
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := pol.(policy.Objective); !ok || o.Latency != 5*time.Second || o.Quantile != 0.9 || o.Prefer != policy.PreferBudget || o.Margin != 0.2 || o.Budget != 0.2 {
		t.Errorf("objective policy: %+v", pol)
	}
	for _, bad := range []string{
		"policy: fastest\n",
		"policy: static\nminSyncPeriod: 0s\n",
		"policy: adaptive\nfloor: 10s\nceiling: 5s\n",
		"policy: static\nminSyncPeriod: soon\n",
		"policy: static\nminSyncPeriodd: 2s\n", // a typo is an error, not a default
		"policy: adaptive\ndecideEvery: 10ms\n",
		"policy: objective\nlatencyObjective: 0s\n",
		"policy: objective\nlatencyQuantile: 99\n",
		"policy: objective\nprefer: speed\n",
	} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAgentOnTestBed runs the agent as a process with a kubeconfig against a real kube-proxy fed by
// the real API server: it sets the configured period within 10 s of its start, sets it again within
// 10 s after kube-proxy is killed and restarted, follows the node's annotation and a change of its
// configuration file, records Events on the Node, serves its metrics and probes, and restores the
// original period on SIGTERM with --reset-on-exit.
func TestAgentOnTestBed(t *testing.T) {
	testbed.NeedRoot(t, "network namespaces, and the agent writes kube-proxy's memory")
	ctx := context.Background()
	// The second kube-proxy is another node's, on the same machine: not the agent's to change.
	c, kps := testbed.Start(t, 20, 3,
		testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second},
		testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.37.2"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	kp, other := kps[0], kps[1]

	dir := t.TempDir()
	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.yaml")
	writeConfig := func(s string) {
		// As the kubelet updates a mounted ConfigMap: a new file renamed over the old.
		tmp := config + ".new"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, config); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig("policy: static\nminSyncPeriod: 3s\n")
	const listen = "127.0.0.1:19842"
	started := time.Now()
	ag, err := c.StartInControlPlane("kptune-agent", kptune, "agent", "--config", config, "--kubeconfig", c.AdminKubeconfig(),
		"--node-name", kp.Node, "--listen", listen, "--interval", "1s", "--state-dir", filepath.Join(dir, "state"), "--reset-on-exit")
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Stop()
	defer func() {
		if t.Failed() {
			log, _ := os.ReadFile(ag.Log())
			t.Logf("agent log:\n%s", log)
		}
	}()

	period := func(k *testbed.KubeProxy) time.Duration {
		found, err := target.Runners(ctx, k.PID())
		if err != nil {
			return -1
		}
		return found[0].MinInterval
	}
	waitPeriod := func(what string, want time.Duration, since time.Time) {
		t.Helper()
		for time.Since(since) < 10*time.Second {
			if period(kp) == want {
				t.Logf("%s: %v after %v", what, want, time.Since(since).Round(10*time.Millisecond))
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: kube-proxy holds %v 10 s later, want %v", what, period(kp), want)
	}

	waitPeriod("agent start", 3*time.Second, started)

	restarted := time.Now()
	if err := kp.Restart(); err != nil {
		t.Fatal(err)
	}
	waitPeriod("kube-proxy killed and restarted", 3*time.Second, restarted)

	annotate := func(v *string) {
		t.Helper()
		val := "null"
		if v != nil {
			val = fmt.Sprintf("%q", *v)
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, Annotation, val)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, kp.Node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	seven := "7s"
	overridden := time.Now()
	annotate(&seven)
	waitPeriod("node annotation 7s", 7*time.Second, overridden)
	cleared := time.Now()
	annotate(nil)
	waitPeriod("annotation removed", 3*time.Second, cleared)

	reloaded := time.Now()
	writeConfig("policy: static\nminSyncPeriod: 5s\n")
	waitPeriod("configuration changed to 5s", 5*time.Second, reloaded)
	writeConfig("policy: nonsense\n")
	time.Sleep(2500 * time.Millisecond)
	if p := period(kp); p != 5*time.Second {
		t.Errorf("after a bad configuration, kube-proxy holds %v, want the last good 5s", p)
	}
	if p := period(other); p != time.Second {
		t.Errorf("another node's kube-proxy holds %v, want its own 1s", p)
	}

	// The agent's own endpoints, in the namespace it runs in.
	client := &http.Client{Transport: &http.Transport{DialContext: netns.ForName(c.NS).DialContext}, Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + listen + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("%s: %d %s", path, code, body)
		}
	}
	_, metrics := get("/metrics")
	for _, want := range []string{`kptune_writes_total{action="set"} 5`, `kptune_kube_proxies 1`, `kptune_config_reloads_total{result="error"} 1`,
		`kptune_config_reloads_total{result="ok"} 1`, `kptune_desired_min_sync_period_seconds{pid=`, "kptune_stop_duration_seconds_count 5"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	events, err := c.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + kp.Node})
	if err != nil {
		t.Fatal(err)
	}
	set := 0
	for _, e := range events.Items {
		if e.Reason == "MinSyncPeriodSet" && e.Source.Component == "kptune" {
			set += int(max(e.Count, 1))
		}
	}
	if set != 5 {
		t.Errorf("%d MinSyncPeriodSet events on Node %s, want 5 (start, restart, annotation, its removal, reload)", set, kp.Node)
	}

	// A write, then SIGTERM before the agent's next round has read the runners again: the reset
	// must plan from what kube-proxy holds now, not from the round's reading before the write.
	four := "4s"
	lastWrite := time.Now()
	annotate(&four)
	waitPeriod("node annotation 4s, just before SIGTERM", 4*time.Second, lastWrite)
	stopped := time.Now()
	ag.Stop()
	if p := period(kp); p != time.Second {
		t.Errorf("after SIGTERM with --reset-on-exit kube-proxy holds %v, want its original 1s (%v)", p, time.Since(stopped))
	}
}

// TestAdaptiveOnTestBed: the adaptive policy closes its loop on a real kube-proxy, with a budget
// of a third of what kube-proxy spends at 1s under churn. Whether a larger period meets it depends
// on how a sync's cost grows with its batch (on this machine, with Debian's iptables-nft, it grows
// faster than the period, so no period meets it): the agent must try, measure, and leave kube-proxy
// at the cheapest period it found: never spending more than at the start (with a margin for the
// noise of CPU windows), and within budget where the budget can be met. Each decision is logged with
// its inputs.
func TestAdaptiveOnTestBed(t *testing.T) {
	testbed.NeedRoot(t, "network namespaces, and the agent writes kube-proxy's memory")
	ctx := context.Background()
	const services = 150
	c, kps := testbed.Start(t, services, 5, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	kp := kps[0]
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 20, Services: services, Endpoints: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	cpu := func(window time.Duration) float64 {
		c0, err := procfs.CPU(kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(window)
		c1, err := procfs.CPU(kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		return (c1 - c0).Seconds() / window.Seconds()
	}
	before := cpu(10 * time.Second)
	budget := before / 3
	t.Logf("kube-proxy at 1s under 20 changes/s: %.3f cores; budget %.3f", before, budget)

	dir := t.TempDir()
	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf("policy: adaptive\nbudget: %.4f\nfloor: 1s\nceiling: 20s\ndecideEvery: 5s\nmaxStep: 2\n", budget)
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ag, err := c.StartInControlPlane("kptune-agent-adaptive", kptune, "agent", "--config", config, "--node-name", kp.Node,
		"--listen", "", "--interval", "1s", "--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Stop()
	for i := 0; i < 12; i++ { // a few decisions: ×2 at most each, windows of 3 periods
		s, _ := kp.Metrics.Scrape(ctx)
		t.Logf("t+%ds: kube-proxy %.3f cores, %d syncs", i*5, cpu(5*time.Second), s.Syncs())
	}
	found, err := target.Runners(ctx, kp.PID())
	if err != nil {
		t.Fatal(err)
	}
	period := found[0].MinInterval
	after := cpu(15 * time.Second)
	log, _ := os.ReadFile(ag.Log())
	t.Logf("adaptive: period %v, kube-proxy %.3f cores (budget %.3f)", period, after, budget)
	if after > max(budget, before)*1.5 {
		t.Errorf("kube-proxy uses %.3f cores at %v: more than at the start (%.3f at 1s), budget %.3f", after, period, before, budget)
	}
	if !bytes.Contains(log, []byte("2s (over budget)")) {
		t.Errorf("the agent never tried a larger period with kube-proxy over budget")
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", log)
	}
	if !bytes.Contains(log, []byte(`"msg":"decision"`)) || !bytes.Contains(log, []byte("cores used, budget")) {
		t.Errorf("no decision logged with its inputs:\n%s", log)
	}

	// Quiet: once a window holds no sync, kube-proxy's metrics (whose every reading costs it CPU)
	// are not read again, so no decision is made, until its CPU rises with churn.
	if _, err := churn.Stop(); err != nil {
		t.Fatal(err)
	}
	agentLog := func() string { b, _ := os.ReadFile(ag.Log()); return string(b) }
	waitLog := func(what string, after int, within time.Duration) int {
		for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
			if i := strings.Index(agentLog()[after:], what); i >= 0 {
				return after + i
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the agent's log within %v:\n%s", what, within, agentLog())
			}
		}
	}
	// A window lasts max(decideEvery, 3 periods), the period at most the 20s ceiling.
	idle := waitLog("kube-proxy is idle", 0, 2*time.Minute)
	const quiet = 15 * time.Second // three decision windows of 5s
	time.Sleep(quiet)
	if n := strings.Count(agentLog()[idle:], `"msg":"decision"`); n > 0 {
		t.Errorf("%d decisions (each a reading of kube-proxy's metrics) in %v of quiet", n, quiet)
	}
	restarted := time.Now()
	churn, err = c.Churn(ctx, testbed.ChurnOptions{Rate: 20, Services: services, Endpoints: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	busy := waitLog("kube-proxy is busy again", idle, 30*time.Second)
	t.Logf("no reading in %v of quiet; busy again %v after the churn resumed", quiet, time.Since(restarted).Round(100*time.Millisecond))
	waitLog(`"msg":"decision"`, busy, time.Minute)
}

// TestStillIdle: an idle kube-proxy's CPU, read from /proc at no cost to it, tells whether its
// metrics need reading.
func TestStillIdle(t *testing.T) {
	for _, c := range []struct {
		idle           float64 // cores over the last window, which held no sync
		spent, elapsed time.Duration
		want           bool
	}{
		{0.001, 40 * time.Millisecond, 20 * time.Second, true}, // at its idle rate (5000 Services)
		{0.001, 60 * time.Millisecond, 20 * time.Second, true}, // twice it, and two ticks
		{0.001, 70 * time.Millisecond, 20 * time.Second, false},
		{0.001, 900 * time.Millisecond, 10 * time.Second, false}, // one sync at 5000 Services
		{0, 20 * time.Millisecond, time.Minute, true},            // the grain of CPU accounting
		{0, 30 * time.Millisecond, time.Second, false},
	} {
		if got := stillIdle(c.idle, c.spent, c.elapsed); got != c.want {
			t.Errorf("stillIdle(%v cores, %v spent in %v) = %v, want %v", c.idle, c.spent, c.elapsed, got, c.want)
		}
	}
}
