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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"kptune/internal/inspect"
	"kptune/internal/kpmetrics"
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
}

func setUp(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	if err := testbed.CleanupAll(); err != nil {
		t.Logf("cleaning up earlier test beds: %v", err)
	}
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
			var o corev1.ServiceAccount
			must(w.t, yaml.UnmarshalStrict(doc, &o))
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			must(w.t, yaml.UnmarshalStrict(doc, &o))
			_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
		case "ConfigMap":
			var o corev1.ConfigMap
			must(w.t, yaml.UnmarshalStrict(doc, &o))
			_, err = cs.CoreV1().ConfigMaps(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "DaemonSet":
			var o appsv1.DaemonSet
			must(w.t, yaml.UnmarshalStrict(doc, &o))
			_, err = cs.AppsV1().DaemonSets(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "Pod":
			var o corev1.Pod
			must(w.t, yaml.UnmarshalStrict(doc, &o))
			_, err = cs.CoreV1().Pods(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		default:
			w.t.Fatalf("%s: no case for kind %s", file, meta.Kind)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			w.t.Fatalf("%s: create %s: %v", file, meta.Kind, err)
		}
	}
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
	pids := w.podProcesses("kube-proxy")
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte("--hostname-override="+node+"\x00")) {
			return pid
		}
	}
	return 0
}

// podProcesses lists the processes of the node's pods whose command name is comm.
func (w *world) podProcesses(comm string) []int {
	var pids []int
	_ = filepath.WalkDir(w.nd.CgroupPath("pids"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if c, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(c)) == comm {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
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
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false, "gone"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok && strings.TrimSpace(v) != "0" {
			return false, "traced by " + strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "State:"); ok && (strings.Contains(v, "T (") || strings.Contains(v, "t (")) {
			return false, "stopped"
		}
	}
	return syscall.Kill(pid, 0) == nil, ""
}

func TestE2E(t *testing.T) {
	ctx := context.Background()
	w := setUp(t)
	kpBin, err := testbed.Build{Version: KubeProxyBuild}.KubeProxy(ctx)
	must(t, err)
	kpImage, err := testbed.KubeProxyImage(ctx, kpBin, KubeProxyBuild)
	must(t, err)
	agentImage, err := testbed.KptuneImage(ctx)
	must(t, err)
	for _, img := range []testbed.Image{kpImage, agentImage} {
		must(t, w.nd.Import(ctx, img))
	}

	w.apply(ctx, filepath.Join("testdata", "kube-proxy.yaml"), map[string]string{
		"IMAGE": kpImage.Name, "SERVER": "https://" + testbed.APIAddress + ":6443", "MIN_SYNC_PERIOD": "1s"})
	var pid int
	w.eventually(2*time.Minute, "kube-proxy's DaemonSet pod runs and syncs", func() (bool, string) {
		if pid = w.kubeProxyPID(w.nd.Name); pid == 0 {
			return false, "no kube-proxy process in the node's pods"
		}
		s, err := w.kubeProxyMetrics(ctx)
		if err != nil {
			return false, err.Error()
		}
		return s.Syncs() > 0, "no sync yet"
	})
	t.Logf("kube-proxy pid %d: %s", pid, w.periods(pid))
}
