package agent

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/internal/netns"
	"kptune/internal/target"
	"kptune/test/testbed"
)

// TestHostileNode runs the agent beside a real kube-proxy under churn and 20 hostile processes,
// as tenants of a node could run them: fakes of kube-proxy's main package (without client-go; as a
// user; with a runner type of 2^49 bytes; mapping 64 GiB) and shells that exec such a fake after
// the agent first saw them. For KPTUNE_HOSTILE_DURATION (5 minutes by default): the agent never
// restarts and its /healthz answers 200 throughout; the real kube-proxy is set to the policy's
// period; every fake is refused with its reason in the log and counted in
// kptune_processes_refused_total; nothing panics.
func TestHostileNode(t *testing.T) {
	testbed.NeedRoot(t, "network namespaces, other users' processes, and the agent writes kube-proxy's memory")
	duration := 5 * time.Minute
	if v := os.Getenv("KPTUNE_HOSTILE_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("KPTUNE_HOSTILE_DURATION=%q: %v", v, err)
		}
		duration = d
	}
	ctx := context.Background()
	c, kps := testbed.Start(t, 200, 5, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	kp := kps[0]

	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte("policy: static\nminSyncPeriod: 3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const listen = "127.0.0.1:19843"
	ag, err := c.StartInControlPlane("kptune-agent-hostile", kptune, "agent", "--config", config, "--kubeconfig", c.AdminKubeconfig(),
		"--node-name", kp.Node, "--listen", listen, "--interval", "1s", "--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	agentPID := ag.PID()
	defer ag.Stop()
	defer func() {
		if t.Failed() {
			log, _ := os.ReadFile(ag.Log())
			t.Logf("agent log (tail):\n%s", tail(string(log), 60))
		}
	}()

	// The hostile processes, started once the agent runs, so that the shells are seen before they exec.
	type fake struct {
		pid    int
		what   string
		reason string // the refusal's reason label
	}
	var fakes []fake
	start := func(what, reason, tags string, uid int, args ...string) {
		h, err := testbed.StartHostile(tags, uid, args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Stop)
		fakes = append(fakes, fake{h.PID, what, reason})
	}
	time.Sleep(2 * time.Second)
	for i := 0; i < 3; i++ {
		_, pid := startExecing(t, testbed.FakeHugeRunner, 3*time.Second)
		fakes = append(fakes, fake{pid, "a shell that execs a fake", "locate"})
	}
	for i := 0; i < 5; i++ {
		start("a fake without client-go", "identity", testbed.FakeKubeProxy, 0)
		start("a fake run by a user", "identity", testbed.FakeWithClientGo, 65534)
	}
	for i := 0; i < 4; i++ {
		start("a fake with a 2^49-byte runner", "locate", testbed.FakeHugeRunner, 0)
	}
	for i := 0; i < 3; i++ {
		start("a fake mapping 64 GiB", "locate", testbed.FakeWithClientGo, 0, "-map", "68719476736")
	}
	if len(fakes) != 20 {
		t.Fatalf("%d hostile processes, want 20", len(fakes))
	}

	ch, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: 200, Endpoints: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Stop()

	client := &http.Client{Transport: &http.Transport{DialContext: netns.ForName(c.NS).DialContext}, Timeout: 5 * time.Second}
	get := func(path string) (int, string, error) {
		resp, err := client.Get("http://" + listen + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	period := func() time.Duration {
		found, err := target.Runners(ctx, kp.PID())
		if err != nil {
			return -1
		}
		return found[0].MinInterval
	}

	began := time.Now()
	checks, setAt := 0, time.Duration(0)
	for time.Since(began) < duration {
		time.Sleep(5 * time.Second)
		checks++
		if !ag.Running() || ag.PID() != agentPID {
			t.Fatalf("the agent exited after %v", time.Since(began).Round(time.Second))
		}
		if code, body, err := get("/healthz"); err != nil || code != http.StatusOK {
			t.Fatalf("/healthz after %v: %d %q %v", time.Since(began).Round(time.Second), code, body, err)
		}
		if setAt == 0 && period() == 3*time.Second {
			setAt = time.Since(began)
		}
	}
	if !kp.Running() {
		t.Fatal("kube-proxy exited")
	}
	if got := period(); got != 3*time.Second {
		t.Errorf("the real kube-proxy holds %v, want the policy's 3s", got)
	}
	_, metrics, err := get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(ag.Log())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for _, f := range fakes {
		want[f.reason]++
		re := regexp.MustCompile(`"msg":"process refused","pid":` + strconv.Itoa(f.pid) + `,"reason":"` + f.reason + `"`)
		if !re.Match(log) {
			t.Errorf("%s (pid %d) not refused for its %s in the agent's log", f.what, f.pid, f.reason)
		}
	}
	for reason, n := range want {
		line := regexp.MustCompile(`(?m)^kptune_processes_refused_total\{reason="` + reason + `"\} (\d+)$`).FindStringSubmatch(metrics)
		if got, _ := strconv.Atoi(safe(line, 1)); got < n {
			t.Errorf("kptune_processes_refused_total{reason=%q} %d, want at least %d", reason, got, n)
		}
	}
	if !strings.Contains(metrics, "kptune_panics_total 0") {
		t.Errorf("panics: %s", grep(metrics, "kptune_panics_total"))
	}
	t.Logf("%v beside 20 hostile processes and kube-proxy under %d changes: %d /healthz checks all 200, kube-proxy set to 3s within %v; %s; %s",
		duration, ch.Changes(), checks, setAt, grep(metrics, "kptune_processes_refused_total{"), grep(metrics, "process_resident_memory_bytes"))
}

func safe(s []string, i int) string {
	if len(s) > i {
		return s[i]
	}
	return ""
}

func grep(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, ", ")
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
