package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"kptune/test/testbed"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestOverrideIsClamped: the node's annotation is held within the configuration's floor and
// ceiling (it had no lower bound: 1ns made kube-proxy sync on every change); a value outside them,
// or not a duration, gets a warning Event on the Node and counts in a metric, once per value.
func TestOverrideIsClamped(t *testing.T) {
	a, err := New(Options{Config: DefaultConfig(), Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{}}}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := idx.Add(node); err != nil {
		t.Fatal(err)
	}
	rec := record.NewFakeRecorder(10)
	a.kube = &kube{node: "n1", nodes: listersv1.NewNodeLister(idx), recorder: rec, ref: &corev1.ObjectReference{Kind: "Node", Name: "n1"}}
	mp := &managed{}
	for _, c := range []struct {
		value  string
		want   time.Duration
		result string // the metric counted, "" for none
	}{
		{"1ns", time.Second, "clamped"}, // the floor (1s by default)
		{"1ns", time.Second, ""},        // the same value again: reported once
		{"5s", 5 * time.Second, ""},
		{"48h", 30 * time.Second, "clamped"}, // the ceiling (30s by default)
		{"-3s", time.Second, "ignored"},      // the policy's: static 1s
		{"soon", time.Second, "ignored"},
	} {
		node.Annotations[Annotation] = c.value
		before := map[string]float64{"clamped": testutil.ToFloat64(a.m.overrides.WithLabelValues("clamped")), "ignored": testutil.ToFloat64(a.m.overrides.WithLabelValues("ignored"))}
		got, source := a.desired(context.Background(), mp, time.Second, time.Now())
		if got != c.want {
			t.Errorf("annotation %q: %v (%s), want %v", c.value, got, source, c.want)
		}
		for result, n := range before {
			want := n
			if result == c.result {
				want++
			}
			if now := testutil.ToFloat64(a.m.overrides.WithLabelValues(result)); now != want {
				t.Errorf("annotation %q: kptune_override_rejected_total{result=%q} %v, want %v", c.value, result, now, want)
			}
		}
		select {
		case e := <-rec.Events:
			if c.result == "" || !strings.Contains(e, "Warning InvalidOverride") {
				t.Errorf("annotation %q: event %q", c.value, e)
			}
		default:
			if c.result != "" {
				t.Errorf("annotation %q: no Event", c.value)
			}
		}
	}
}

// TestGuardRecovers: a panic while reading one process is recovered, counted and logged, and
// the agent goes on.
func TestGuardRecovers(t *testing.T) {
	a, err := New(Options{Config: DefaultConfig(), Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	a.guard(1, "examine", func() { panic("a crafted binary") })
	a.guard(2, "examine", func() { ran = true })
	if !ran || testutil.ToFloat64(a.m.panics) != 1 || testutil.ToFloat64(a.m.refused.WithLabelValues("panic")) != 1 {
		t.Errorf("after a panic: ran %v, panics %v", ran, testutil.ToFloat64(a.m.panics))
	}
}

// TestLocateBackoff: a process in which no runner is found is searched every round five times (a
// kube-proxy that is starting), then less and less often, never less than every two minutes.
func TestLocateBackoff(t *testing.T) {
	for misses, want := range map[int]time.Duration{1: 0, 5: 0, 6: 4 * time.Second, 7: 8 * time.Second, 12: 2 * time.Minute, 1000: 2 * time.Minute} {
		if got := locateBackoff(misses, 2*time.Second); got != want {
			t.Errorf("after %d misses: %v, want %v", misses, got, want)
		}
	}
}

// TestDiscoveryFollowsExec: a process first seen as something else (a shell, runc init) that then
// execs a kube-proxy keeps its PID and start time, and is examined again (it was cached as "not a
// kube-proxy" by those two alone, and never looked at again).
func TestDiscoveryFollowsExec(t *testing.T) {
	testbed.NeedRoot(t, "a kube-proxy runs as root, and the agent reads other processes' executables")
	fake, pid := startExecing(t, testbed.FakeWithClientGo, time.Second)
	a, err := New(Options{Config: DefaultConfig(), Log: quiet(), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	managed := func() bool {
		for k := range a.procs {
			if k.pid == pid {
				return true
			}
		}
		return false
	}
	a.discover(context.Background())
	if managed() {
		t.Fatal("the shell is taken for a kube-proxy")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe == fake {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell did not exec the fake kube-proxy")
		}
	}
	a.discover(context.Background())
	if !managed() {
		t.Fatal("the process that exec'd a kube-proxy was not examined again")
	}
}

// startExecing starts a shell that execs the fake built with tags after delay, as runc init or an
// entrypoint script turns into kube-proxy; it returns the fake's path and the shell's PID, which the
// fake keeps. The shell dies with the test.
func startExecing(t *testing.T, tags string, delay time.Duration) (string, int) {
	t.Helper()
	fake, err := testbed.Hostile(tags)
	if err != nil {
		t.Fatal(err)
	}
	sh := exec.Command("sh", "-c", fmt.Sprintf(`sleep %g; exec "$0"`, delay.Seconds()), fake)
	sh.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.Process.Kill(); _ = sh.Wait() })
	return fake, sh.Process.Pid
}

// TestMissingCapability: an agent started without CAP_SYS_PTRACE (the chart's capability removed)
// would find every kube-proxy unreadable and skip it without a word; it says which capability is
// missing in its log and its /readyz, and does no work (its /healthz stays up, so that the kubelet
// does not restart it in a loop).
func TestMissingCapability(t *testing.T) {
	testbed.NeedRoot(t, "the agent's privilege check")
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv (util-linux): cannot start a process without CAP_SYS_PTRACE")
	}
	bin, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logFile := filepath.Join(t.TempDir(), "agent.log")
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--",
		bin, "agent", "--listen", addr, "--state-dir", t.TempDir(), "--interval", "200ms")
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=", "NODE_NAME=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "CAP_SYS_PTRACE") {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile)
			t.Fatalf("/readyz of an agent without CAP_SYS_PTRACE: %d %q; its log:\n%s", code, body, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // five rounds of a working agent
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q, want 200: the kubelet would restart it in a loop", code, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "\nkptune_last_reconcile_timestamp_seconds 0\n") {
		t.Errorf("the agent without CAP_SYS_PTRACE ran a round: its /metrics:\n%s", body)
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), "CAP_SYS_PTRACE") {
		t.Errorf("its log does not name CAP_SYS_PTRACE:\n%s", b)
	}
}
