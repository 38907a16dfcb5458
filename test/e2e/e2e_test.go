//go:build e2e

// Package e2e runs kptune as its users deploy it: a one-node cluster of the test bed (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet on containerd), kube-proxy as
// kubeadm's DaemonSet, and kptune installed by its Helm chart. `make e2e` runs it.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kptune/internal/freeze"
	"kptune/internal/inspect"
	"kptune/internal/kpmetrics"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// KubeProxyBuild is the kube-proxy the DaemonSet runs: the last release of the older runner, whose
// rate limiter kptune retunes along with the period.
const KubeProxyBuild = "v1.33.5"

// world is the cluster every step of the test shares.
type world struct {
	t        *testing.T
	c        *testbed.Cluster
	nd       *testbed.Node
	kptune   string // kptune built for this machine, to inspect kube-proxy from the node
	stateDir string // the agent's state directory on the node (the chart's hostPath)
	chart    string
	// kubeProxyImage is the image of KubeProxyBuild, imported into the node's containerd.
	kubeProxyImage string
}

// setUp starts the cluster and its node and imports the images of kube-proxy and kptune.
func setUp(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	c, err := testbed.Up(ctx, testbed.ClusterOptions{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			keepLogs(t, c)
		}
		_ = c.Down()
	})
	if err := c.StartControllers(ctx); err != nil {
		t.Fatal(err)
	}
	nd, err := c.StartNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, c: c, nd: nd, stateDir: filepath.Join(c.Dir, "kptune-state"),
		chart: filepath.Join(testbed.RepoRoot(), "deploy", "helm", "kptune")}
	if w.kptune, err = testbed.Kptune(); err != nil {
		t.Fatal(err)
	}
	kpBin, err := testbed.Build{Version: KubeProxyBuild}.KubeProxy(ctx)
	must(t, err)
	kpImage, err := testbed.KubeProxyImage(ctx, kpBin)
	must(t, err)
	agentImage, err := testbed.KptuneImage(ctx)
	must(t, err)
	for _, img := range []testbed.Image{kpImage, agentImage} {
		must(t, nd.Import(ctx, img))
	}
	w.kubeProxyImage = kpImage.Name
	return w
}

// keepLogs copies the test bed's logs where a failed run's reader finds them.
func keepLogs(t *testing.T, c *testbed.Cluster) {
	dst := filepath.Join(os.TempDir(), "kptune-e2e-logs")
	_ = os.RemoveAll(dst)
	err := filepath.WalkDir(c.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), ".log") {
			return nil
		}
		rel, _ := filepath.Rel(c.Dir, path)
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Logf("keeping the logs: %v", err)
		return
	}
	t.Logf("logs of the failed run: %s", dst)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// eventually polls cond every 200 ms until it holds, failing the test after timeout with what
// cond last said.
func (w *world) eventually(timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	w.t.Helper()
	start := time.Now()
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return time.Since(start)
		}
		if msg != "" {
			last = msg
		}
		if time.Since(start) > timeout {
			w.t.Fatalf("%s: not within %v (last: %s)", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// apply creates the objects of a multi-document YAML manifest (ServiceAccount, ClusterRoleBinding,
// ConfigMap, DaemonSet, Pod), after replacing each {{KEY}}.
func (w *world) apply(ctx context.Context, file string, vars map[string]string) {
	w.t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range vars {
		raw = bytes.ReplaceAll(raw, []byte("{{"+k+"}}"), []byte(v))
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	cs := w.c.Client
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		} else if err != nil {
			w.t.Fatal(err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil || meta.Kind == "" {
			continue
		}
		switch meta.Kind {
		case "ServiceAccount":
			err = create(ctx, doc, cs.CoreV1().ServiceAccounts(ns(doc)))
		case "ClusterRoleBinding":
			err = create(ctx, doc, cs.RbacV1().ClusterRoleBindings())
		case "ConfigMap":
			err = create(ctx, doc, cs.CoreV1().ConfigMaps(ns(doc)))
		case "DaemonSet":
			err = create(ctx, doc, cs.AppsV1().DaemonSets(ns(doc)))
		case "Pod":
			err = create(ctx, doc, cs.CoreV1().Pods(ns(doc)))
		default:
			w.t.Fatalf("%s: no case for kind %s", file, meta.Kind)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			w.t.Fatalf("%s: create %s: %v", file, meta.Kind, err)
		}
	}
}

// create decodes one object of a manifest (strictly: a misspelt field fails) and creates it.
func create[T any](ctx context.Context, doc []byte, c interface {
	Create(context.Context, *T, metav1.CreateOptions) (*T, error)
}) error {
	var o T
	if err := yaml.UnmarshalStrict(doc, &o); err != nil {
		return err
	}
	_, err := c.Create(ctx, &o, metav1.CreateOptions{})
	return err
}

// ns is the namespace a manifest's object names.
func ns(doc []byte) string {
	var m metav1.PartialObjectMetadata
	_ = yaml.Unmarshal(doc, &m)
	return m.Namespace
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// kubeProxyPID returns the PID of the node's kube-proxy serving node name (its
// --hostname-override), found among the processes of the node's pods, or 0.
func (w *world) kubeProxyPID(node string) int {
	for _, p := range w.podProcesses("kube-proxy") {
		if slices.Contains(p.Cmdline, "--hostname-override="+node) {
			return p.PID
		}
	}
	return 0
}

// podProcesses lists the processes of the node's pods whose command name is comm.
func (w *world) podProcesses(comm string) []procfs.Process {
	var procs []procfs.Process
	_ = filepath.WalkDir(w.nd.CgroupPath("pids"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if p, err := procfs.Get(pid); err == nil && p.Comm == comm {
				procs = append(procs, p)
			}
		}
		return nil
	})
	return procs
}

// inspect reads kube-proxy's runners from the node with `kptune inspect`, as an operator would.
func (w *world) inspect(pid int) (inspect.Process, error) {
	out, err := exec.Command(w.kptune, "inspect", "--pid", strconv.Itoa(pid), "--locate", "scan", "-o", "json").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return inspect.Process{}, fmt.Errorf("kptune inspect --pid %d: %v: %s", pid, err, ee.Stderr)
		}
		return inspect.Process{}, err
	}
	var r inspect.Report
	if err := json.Unmarshal(out, &r); err != nil {
		return inspect.Process{}, fmt.Errorf("kptune inspect --pid %d: %v", pid, err)
	}
	if len(r.Processes) != 1 {
		return inspect.Process{}, fmt.Errorf("kptune inspect --pid %d reported %d processes", pid, len(r.Processes))
	}
	p := r.Processes[0]
	if p.Error != "" {
		return p, fmt.Errorf("kptune inspect --pid %d: %s", pid, p.Error)
	}
	return p, nil
}

// periods is what each of kube-proxy's runners holds: "3s" when all hold 3s.
func (w *world) periods(pid int) string {
	p, err := w.inspect(pid)
	if err != nil {
		return err.Error()
	}
	if len(p.Runners) == 0 {
		return "no runner"
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range p.Runners {
		v := r.MinInterval
		if r.QPS != nil {
			v += fmt.Sprintf(" (qps %g)", *r.QPS)
		}
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return strings.Join(out, ", ")
}

// holds reports whether every runner of kube-proxy pid holds period d (and, on the older runner,
// its rate limiter agrees).
func (w *world) holds(pid int, d time.Duration) (bool, string) {
	p, err := w.inspect(pid)
	if err != nil {
		return false, err.Error()
	}
	if len(p.Runners) == 0 {
		return false, "no runner yet"
	}
	for _, r := range p.Runners {
		got, err := time.ParseDuration(r.MinInterval)
		if err != nil || got != d {
			return false, "runner holds " + r.MinInterval
		}
		if r.QPS != nil && d > 0 && fmt.Sprintf("%.4g", *r.QPS) != fmt.Sprintf("%.4g", float32(1/d.Seconds())) {
			return false, fmt.Sprintf("runner's limiter holds qps %g", *r.QPS)
		}
	}
	return true, ""
}

// kubeProxyMetrics scrapes the node's kube-proxy.
func (w *world) kubeProxyMetrics(ctx context.Context) (kpmetrics.Snapshot, error) {
	return kpmetrics.NewClient(w.nd.Dialer(), testbed.MetricsAddress).Scrape(ctx)
}

// agentGet fetches a path of the agent's HTTP server on the node's loopback.
func (w *world) agentGet(ctx context.Context, path string) (int, string, error) {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: w.nd.Dialer().DialContext, DisableKeepAlives: true}}
	resp, err := cl.Get("http://127.0.0.1:9842" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(b), err
}

// agentPeriod is kptune_min_sync_period_seconds for the kube-proxy of pid, as the agent reports it.
func (w *world) agentPeriod(ctx context.Context, pid int) (float64, bool) {
	code, body, err := w.agentGet(ctx, "/metrics")
	if err != nil || code != 200 {
		return 0, false
	}
	re := regexp.MustCompile(`(?m)^kptune_min_sync_period_seconds\{[^}]*pid="` + strconv.Itoa(pid) + `"[^}]*\} (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// agentPod returns the agent's pod of a release, and whether it is Ready.
func (w *world) agentPod(ctx context.Context, release string) (*corev1.Pod, bool) {
	pods, err := w.c.Client.CoreV1().Pods("kptune").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		return nil, false
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return p, true
			}
		}
		return p, false
	}
	return nil, false
}

// events lists the Events on the node with a reason.
func (w *world) events(ctx context.Context, reason string) []corev1.Event {
	sel := fields.Set{"involvedObject.kind": "Node", "involvedObject.name": w.nd.Name, "reason": reason}.AsSelector().String()
	list, err := w.c.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil
	}
	return list.Items
}

// helm runs the chart's helm in the control plane's namespace.
func (w *world) helm(ctx context.Context, args ...string) string {
	w.t.Helper()
	out, err := w.c.Helm(ctx, args...)
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

// alive reports whether pid runs and is not stopped or traced.
func alive(pid int) (bool, string) {
	p, err := procfs.Get(pid)
	if err != nil {
		return false, "gone"
	}
	if tracer, err := freeze.TracerPID(pid); err == nil && tracer != 0 {
		return false, fmt.Sprintf("traced by %d", tracer)
	}
	if p.State == 't' || p.State == 'T' {
		return false, "stopped"
	}
	return syscall.Kill(pid, 0) == nil, ""
}

// summary is the median, min and max of xs.
func summary(xs []float64) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("median %.2f min %.2f max %.2f n %d", s[len(s)/2], s[0], s[len(s)-1], len(s))
}

// Figures the test measures, logged as one line each for bench/results (see make e2e).
func (w *world) figure(name string, v any) { w.t.Logf("figure %s %v", name, v) }

func TestE2E(t *testing.T) {
	ctx := context.Background()
	w := setUp(t)

	// Services of three endpoints each: kube-proxy spreads them with iptables' statistic match.
	must(t, w.c.Load(ctx, 50, 3))
	w.apply(ctx, filepath.Join("testdata", "kube-proxy.yaml"), map[string]string{
		"IMAGE": w.kubeProxyImage, "SERVER": "https://" + testbed.APIAddress + ":6443", "MIN_SYNC_PERIOD": "1s"})
	pid, firstSync := w.waitKubeProxy(ctx, 0, 2*time.Minute)
	t.Logf("kube-proxy pid %d: %s", pid, w.periods(pid))

	install := []string{"install", "kptune", w.chart, "--namespace", "kptune", "--create-namespace",
		"--set", "image.pullPolicy=Never", "--set", "stateDir=" + w.stateDir, "--set", "resetOnExit=true",
		"--set", "config.policy=static", "--set", "config.minSyncPeriod=3s"}
	step(t, "helm install: the agent is Ready and kube-proxy holds the policy's period", func(t *testing.T) {
		start := time.Now()
		w.helm(ctx, install...)
		ready := w.eventually(90*time.Second, "the agent's pod is Ready", func() (bool, string) {
			p, ok := w.agentPod(ctx, "kptune")
			if p == nil {
				return false, "no pod"
			}
			return ok, string(p.Status.Phase)
		})
		w.eventually(30*time.Second, "kube-proxy holds 3s", func() (bool, string) { return w.holds(pid, 3*time.Second) })
		written := time.Since(start)
		w.figure("install_to_ready_s", ready.Seconds())
		w.figure("install_to_verified_write_s", written.Seconds())
		t.Logf("helm install → Ready %v, → 3s verified %v (kube-proxy's first sync was %v before the install)",
			ready.Round(time.Millisecond), written.Round(time.Millisecond), start.Sub(firstSync).Round(time.Millisecond))
		if ok, why := alive(pid); !ok {
			t.Fatalf("kube-proxy after the write: %s", why)
		}
	})

	step(t, "the agent's /metrics on the node's loopback, not on its address", func(t *testing.T) {
		w.eventually(20*time.Second, "kptune_min_sync_period_seconds is 3", func() (bool, string) {
			v, ok := w.agentPeriod(ctx, pid)
			return ok && v == 3, fmt.Sprint(v)
		})
		if conn, err := w.nd.Dialer().DialContext(ctx, "tcp", w.nd.IP+":9842"); err == nil {
			conn.Close()
			t.Errorf("the agent answers on the node's address %s:9842; the chart's default is its loopback", w.nd.IP)
		}
	})

	step(t, "the Node's annotation sets the period, with an Event", func(t *testing.T) {
		w.annotate(ctx, "5s")
		w.eventually(30*time.Second, "kube-proxy holds 5s", func() (bool, string) { return w.holds(pid, 5*time.Second) })
		w.eventually(30*time.Second, "an Event MinSyncPeriodSet for 5s on the Node", func() (bool, string) {
			for _, e := range w.events(ctx, "MinSyncPeriodSet") {
				if strings.Contains(e.Message, "→ 5s") {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%d such Events, none for 5s", len(w.events(ctx, "MinSyncPeriodSet")))
		})
		w.annotate(ctx, "")
		w.eventually(30*time.Second, "kube-proxy back at the policy's 3s", func() (bool, string) { return w.holds(pid, 3*time.Second) })
	})

	step(t, "kubectl delete pod: the new kube-proxy is set within 10 s of its first sync", func(t *testing.T) {
		old := pid
		w.deleteKubeProxyPod(ctx)
		pid, firstSync = w.waitKubeProxy(ctx, old, 2*time.Minute)
		w.eventually(30*time.Second, "the new kube-proxy holds 3s", func() (bool, string) { return w.holds(pid, 3*time.Second) })
		since := time.Since(firstSync)
		w.figure("new_pod_first_sync_to_verified_write_s", since.Seconds())
		t.Logf("new kube-proxy pid %d (was %d): 3s verified %v after its first sync", pid, old, since.Round(time.Millisecond))
		if since > 10*time.Second {
			t.Errorf("the new kube-proxy was set %v after its first sync, want ≤ 10 s", since)
		}
	})

	step(t, "helm upgrade to the adaptive policy and back", func(t *testing.T) {
		w.helm(ctx, "upgrade", "kptune", w.chart, "--namespace", "kptune", "--reuse-values", "--set", "config.policy=adaptive", "--set", "config.decideEvery=10s")
		w.eventually(90*time.Second, "the agent runs the adaptive policy", func() (bool, string) {
			code, body, err := w.agentGet(ctx, "/metrics")
			if err != nil || code != 200 {
				return false, fmt.Sprint(code, err)
			}
			return strings.Contains(body, `source="adaptive`) || strings.Contains(body, `source="policy adaptive`), "no adaptive decision in /metrics yet"
		})
		w.helm(ctx, "upgrade", "kptune", w.chart, "--namespace", "kptune", "--reuse-values", "--set", "config.policy=static", "--set", "config.minSyncPeriod=2s")
		w.eventually(90*time.Second, "kube-proxy holds the static 2s", func() (bool, string) { return w.holds(pid, 2*time.Second) })
	})

	step(t, "kube-proxy's container restarting in a loop: no state left behind", func(t *testing.T) {
		var restart, set []float64
		for i := 0; i < 20; i++ {
			old := pid
			killed := time.Now()
			_ = syscall.Kill(old, syscall.SIGKILL)
			var synced time.Time
			pid, synced = w.waitKubeProxy(ctx, old, time.Minute)
			w.eventually(30*time.Second, "the restarted kube-proxy holds 2s", func() (bool, string) { return w.holds(pid, 2*time.Second) })
			restart = append(restart, synced.Sub(killed).Seconds())
			set = append(set, time.Since(synced).Seconds())
		}
		w.figure("restart_loop_kill_to_first_sync_s", summary(restart))
		w.figure("restart_loop_first_sync_to_verified_write_s", summary(set))
		if slices.Max(set) > 10 {
			t.Errorf("a restarted kube-proxy was set %.1f s after its first sync, want ≤ 10 s", slices.Max(set))
		}
		records, locks := w.stateFiles("records"), w.stateFiles("locks")
		w.figure("restart_loop_records", len(records))
		w.figure("restart_loop_locks", len(locks))
		t.Logf("after 20 restarts: records %v, locks %v", records, locks)
		if len(records) > 1 || len(locks) > 1 {
			t.Errorf("after 20 restarts the state directory holds %d records and %d locks, want at most the live kube-proxy's", len(records), len(locks))
		}
		if ok, why := alive(pid); !ok {
			t.Fatalf("kube-proxy: %s", why)
		}
	})

	step(t, "the API server unreachable for 60 s: the period held, /healthz up, caught up after", func(t *testing.T) {
		w.apiLink(false)
		restored := false
		defer func() {
			if !restored {
				w.apiLink(true)
			}
		}()
		w.annotate(ctx, "4s") // seen only once the API server is back
		end := time.Now().Add(60 * time.Second)
		checks := 0
		for time.Now().Before(end) {
			code, body, err := w.agentGet(ctx, "/healthz")
			if err != nil || code != 200 {
				t.Fatalf("the agent's /healthz during the outage: %v %d %s", err, code, body)
			}
			checks++
			time.Sleep(5 * time.Second)
		}
		if ok, why := w.holds(pid, 2*time.Second); !ok {
			t.Errorf("during the outage kube-proxy's period changed: %s", why)
		}
		w.apiLink(true)
		restored = true
		w.eventually(90*time.Second, "the annotation set during the outage is applied", func() (bool, string) { return w.holds(pid, 4*time.Second) })
		t.Logf("%d /healthz checks during the outage, all 200", checks)
		w.annotate(ctx, "")
		w.eventually(30*time.Second, "back at 2s", func() (bool, string) { return w.holds(pid, 2*time.Second) })
	})

	step(t, "a kube-proxy of another node's name is left alone", func(t *testing.T) {
		w.apply(ctx, filepath.Join("testdata", "other-kube-proxy.yaml"), map[string]string{"IMAGE": w.kubeProxyImage})
		var other int
		w.eventually(90*time.Second, "the other kube-proxy syncs its runners", func() (bool, string) {
			if other = w.kubeProxyPID("elsewhere"); other == 0 {
				return false, "not running"
			}
			p, err := w.inspect(other)
			if err != nil {
				return false, err.Error()
			}
			return len(p.Runners) > 0, "no runner"
		})
		time.Sleep(10 * time.Second) // five rounds of the agent
		if ok, why := w.holds(other, time.Second); !ok {
			t.Errorf("the other node's kube-proxy: %s, want its own 1s", why)
		}
		if n := w.auditLines(other); n != 0 {
			t.Errorf("the audit log has %d lines for the other node's kube-proxy", n)
		}
		if _, ok := w.agentPeriod(ctx, other); ok {
			t.Errorf("the agent reports a period for the other node's kube-proxy")
		}
		if !strings.Contains(w.agentLog(), `"msg":"kube-proxy of another node: left alone","pid":`+strconv.Itoa(other)+`,"node":"elsewhere"`) {
			t.Errorf("the agent's log does not say it left pid %d (node elsewhere) alone", other)
		}
		must(t, w.c.Client.CoreV1().Pods("kube-system").Delete(ctx, "kube-proxy-elsewhere", metav1.DeleteOptions{}))
	})

	step(t, "helm uninstall with resetOnExit restores the started period", func(t *testing.T) {
		w.helm(ctx, "uninstall", "kptune", "--namespace", "kptune", "--wait")
		w.eventually(60*time.Second, "kube-proxy back at its own 1s", func() (bool, string) { return w.holds(pid, time.Second) })
		w.eventually(60*time.Second, "the agent's pod is gone", func() (bool, string) {
			p, _ := w.agentPod(ctx, "kptune")
			return p == nil, "still there"
		})
	})

	step(t, "without SYS_PTRACE: the agent says so and writes nothing", func(t *testing.T) {
		before := w.auditLines(0)
		w.helm(ctx, append(install[:len(install):len(install)], "--set-json", "capabilities=[]")...)
		w.eventually(60*time.Second, "a Warning Event MissingCapability naming CAP_SYS_PTRACE", func() (bool, string) {
			for _, e := range w.events(ctx, "MissingCapability") {
				if strings.Contains(e.Message, "CAP_SYS_PTRACE") {
					return true, ""
				}
			}
			return false, "none"
		})
		w.eventually(30*time.Second, "the agent's log names CAP_SYS_PTRACE", func() (bool, string) {
			return strings.Contains(w.agentLog(), "CAP_SYS_PTRACE"), "not in the log yet"
		})
		time.Sleep(6 * time.Second) // three rounds of a working agent
		if p, ready := w.agentPod(ctx, "kptune"); p == nil || ready {
			t.Errorf("the agent without SYS_PTRACE: pod %v, Ready %v; want a pod that is not Ready", p != nil, ready)
		}
		if ok, why := w.holds(pid, time.Second); !ok {
			t.Errorf("kube-proxy: %s, want its own 1s untouched", why)
		}
		if after := w.auditLines(0); after != before {
			t.Errorf("the audit log grew from %d to %d lines", before, after)
		}
		if ok, why := alive(pid); !ok {
			t.Errorf("kube-proxy: %s", why)
		}
		w.helm(ctx, "uninstall", "kptune", "--namespace", "kptune", "--wait")
	})

	step(t, "kube-proxy synced without a failure throughout", func(t *testing.T) {
		s, err := w.kubeProxyMetrics(ctx)
		must(t, err)
		if f := s.Value(kpmetrics.RestoreFailures); f != 0 {
			t.Errorf("kube-proxy pid %d: %v iptables-restore failures", pid, f)
		}
		if ok, why := alive(pid); !ok {
			t.Errorf("kube-proxy: %s", why)
		}
	})
}

// step runs one step of the test; a failed step ends the test, since the next ones build on it.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// waitKubeProxy waits for a kube-proxy process of the node other than old, and its first sync.
func (w *world) waitKubeProxy(ctx context.Context, old int, timeout time.Duration) (pid int, firstSync time.Time) {
	w.t.Helper()
	w.eventually(timeout, "a new kube-proxy runs and syncs", func() (bool, string) {
		if pid = w.kubeProxyPID(w.nd.Name); pid == 0 || pid == old {
			return false, "no new kube-proxy process in the node's pods"
		}
		s, err := w.kubeProxyMetrics(ctx)
		if err != nil {
			return false, err.Error()
		}
		if f := s.Value(kpmetrics.RestoreFailures); f > 0 {
			w.t.Fatalf("kube-proxy pid %d: %v iptables-restore failures: its image lacks part of the netfilter userland (see its log)", pid, f)
		}
		return s.Syncs() > 0, "no sync yet"
	})
	return pid, time.Now()
}

// annotate sets (or, with "", removes) the Node's kptune.io/min-sync-period.
func (w *world) annotate(ctx context.Context, v string) {
	w.t.Helper()
	patch := `{"metadata":{"annotations":{"kptune.io/min-sync-period":null}}}`
	if v != "" {
		patch = `{"metadata":{"annotations":{"kptune.io/min-sync-period":"` + v + `"}}}`
	}
	if _, err := w.c.Client.CoreV1().Nodes().Patch(ctx, w.nd.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) deleteKubeProxyPod(ctx context.Context) {
	w.t.Helper()
	pods, err := w.c.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	must(w.t, err)
	if len(pods.Items) != 1 {
		w.t.Fatalf("%d kube-proxy pods, want 1", len(pods.Items))
	}
	must(w.t, w.c.Client.CoreV1().Pods("kube-system").Delete(ctx, pods.Items[0].Name, metav1.DeleteOptions{}))
}

// stateFiles lists a subdirectory of the agent's state directory.
func (w *world) stateFiles(sub string) []string {
	ents, _ := os.ReadDir(filepath.Join(w.stateDir, sub))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// auditLines counts the lines of the agent's audit log about pid (0: all).
func (w *world) auditLines(pid int) int {
	b, _ := os.ReadFile(filepath.Join(w.stateDir, "audit.log"))
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if line != "" && (pid == 0 || strings.Contains(line, fmt.Sprintf(`"pid":%d,`, pid))) {
			n++
		}
	}
	return n
}

// agentLog is the log of the agent's container, as the kubelet keeps it on the node.
func (w *world) agentLog() string {
	files, _ := filepath.Glob(filepath.Join(w.nd.Dir, "pod-logs", "kptune_*", "agent", "*.log"))
	var all []byte
	for _, f := range files {
		b, _ := os.ReadFile(f)
		all = append(all, b...)
	}
	return string(all)
}

// apiLink cuts (or restores) the node's link to the control plane: the API server is unreachable
// from the node, and the node's processes keep running.
func (w *world) apiLink(up bool) {
	w.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("ip", "-n", w.nd.NS, "link", "set", "eth0", state).CombinedOutput(); err != nil {
		w.t.Fatalf("ip link set eth0 %s: %v: %s", state, err, out)
	}
	if up {
		// The default route went with the link.
		_ = exec.Command("ip", "-n", w.nd.NS, "route", "replace", "default", "via", strings.TrimSuffix(w.nd.IP, ".2")+".1").Run()
	}
}
