// Package deploy holds kptune's deployment: the plain manifests (kubernetes/), the Helm chart
// (helm/kptune), and the Grafana dashboard (grafana/). Its tests check them against the real
// kube-apiserver of the test bed and against the agent they deploy.
package deploy

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"kptune/internal/agent"
	"kptune/internal/kpmetrics"
	"kptune/test/testbed"
)

func docs(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if obj != nil {
			out = append(out, &unstructured.Unstructured{Object: obj})
		}
	}
}

func render(t *testing.T, namespace string) []byte {
	t.Helper()
	helm, err := exec.Command(filepath.Join(testbed.RepoRoot(), "test/helm/build.sh")).Output()
	if err != nil {
		t.Fatalf("build helm: %v", err)
	}
	cmd := exec.Command(strings.TrimSpace(string(helm)), "template", "kt", filepath.Join(testbed.RepoRoot(), "deploy/helm/kptune"), "--namespace", namespace)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return out
}

// checkWorkload: the shipped configuration is one the agent accepts, and every flag the DaemonSet
// passes is one the agent has.
func checkWorkload(t *testing.T, objs []*unstructured.Unstructured, flags string) {
	t.Helper()
	var sawConfig, sawDS bool
	for _, o := range objs {
		switch o.GetKind() {
		case "ConfigMap":
			var cm corev1.ConfigMap
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cm); err != nil {
				t.Fatal(err)
			}
			if _, err := agent.ParseConfig([]byte(cm.Data["config.yaml"])); err != nil {
				t.Errorf("ConfigMap %s: %v", o.GetName(), err)
			}
			sawConfig = true
		case "DaemonSet":
			args, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			c := args[0].(map[string]any)
			for _, a := range c["args"].([]any) {
				name, _, _ := strings.Cut(a.(string), "=")
				if strings.HasPrefix(name, "--") && !strings.Contains(flags, "  "+name+" ") {
					t.Errorf("DaemonSet passes %s, which `kptune agent` does not have", name)
				}
			}
			hostPID, _, _ := unstructured.NestedBool(o.Object, "spec", "template", "spec", "hostPID")
			add, _, _ := unstructured.NestedStringSlice(c, "securityContext", "capabilities", "add")
			ro, _, _ := unstructured.NestedBool(c, "securityContext", "readOnlyRootFilesystem")
			if !hostPID || !slices.Equal(add, []string{"SYS_PTRACE"}) || !ro {
				t.Errorf("DaemonSet: hostPID %v, capabilities %v, read-only root %v; want true, [SYS_PTRACE], true", hostPID, add, ro)
			}
			// The unauthenticated endpoints stay on the node's loopback, probed there.
			if !slices.ContainsFunc(c["args"].([]any), func(a any) bool { return strings.HasPrefix(a.(string), "--listen=127.0.0.1:") }) {
				t.Errorf("DaemonSet: the agent does not listen on 127.0.0.1 only: %v", c["args"])
			}
			for _, probe := range []string{"livenessProbe", "readinessProbe"} {
				if host, _, _ := unstructured.NestedString(c, probe, "httpGet", "host"); host != "127.0.0.1" {
					t.Errorf("DaemonSet: %s probes %q, want 127.0.0.1", probe, host)
				}
			}
			sawDS = true
		}
	}
	if !sawConfig || !sawDS {
		t.Errorf("no ConfigMap (%v) or DaemonSet (%v)", sawConfig, sawDS)
	}
}

// TestManifests applies the plain manifests and the rendered Helm chart to the test bed's real
// kube-apiserver (server-side apply: its validation and admission accept every object) and checks
// that the agent would accept their configuration and flags.
func TestManifests(t *testing.T) {
	testbed.NeedRoot(t, "the test bed's network namespaces")
	ctx := context.Background()
	c, _ := testbed.Start(t, 0, 0)
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(objs []*unstructured.Unstructured) {
		for _, o := range objs {
			gvk := o.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s %s: %v", gvk, o.GetName(), err)
			}
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if ns := o.GetNamespace(); ns != "" {
				ri = dyn.Resource(m.Resource).Namespace(ns)
			}
			if _, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "kptune-deploy-test", Force: true}); err != nil {
				t.Errorf("apply %s %s: %v", gvk.Kind, o.GetName(), err)
			}
		}
	}
	kptune, err := testbed.Kptune()
	if err != nil {
		t.Fatal(err)
	}
	help, err := exec.Command(kptune, "agent", "--help").Output()
	if err != nil {
		t.Fatal(err)
	}

	plain, err := os.ReadFile("kubernetes/kptune.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := docs(t, plain)
	checkWorkload(t, objs, string(help))
	apply(objs)

	const ns = "kptune-helm"
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	chart := docs(t, render(t, ns))
	checkWorkload(t, chart, string(help))
	apply(chart)
	t.Logf("applied %d plain objects and %d from the chart", len(objs), len(chart))

	for _, name := range []string{"kptune/kptune-agent", ns + "/kt-agent"} {
		nsName, dsName, _ := strings.Cut(name, "/")
		if _, err := c.Client.AppsV1().DaemonSets(nsName).Get(ctx, dsName, metav1.GetOptions{}); err != nil {
			t.Errorf("DaemonSet %s not stored: %v", name, err)
		}
	}
}

var metricRE = regexp.MustCompile(`\b(kptune_[a-z_]+|kubeproxy_[a-z_]+)`)

// TestDashboard: the dashboard is valid JSON and every metric it queries exists: the agent's own,
// and kube-proxy's that kptune knows.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/kptune.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, n := range agent.MetricNames() {
		known[n] = true
	}
	for _, n := range []string{kpmetrics.SyncDuration, kpmetrics.NetworkProgramming, kpmetrics.EndpointChanges, kpmetrics.ServiceChanges} {
		known[n] = true
	}
	exprs := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum")
				if !known[m] && !known[base] {
					t.Errorf("panel %q queries %s, which neither the agent nor kube-proxy exports", p.Title, m)
				}
			}
		}
	}
	if len(d.Panels) < 8 || exprs < 12 {
		t.Errorf("%d panels, %d queries", len(d.Panels), exprs)
	}
}

// TestImage builds the agent's image from the Dockerfile as `make image` does without Docker (buildah,
// no daemon, in storage of the test's own) and checks what a node will run: one layer holding the
// static binary alone (no ELF interpreter: FROM scratch has none), entrypoint /kptune agent, and
// the binary runs from the image's root filesystem.
func TestImage(t *testing.T) {
	testbed.NeedRoot(t, "buildah's storage and chroot")
	dir := t.TempDir()
	bin := filepath.Join(testbed.RepoRoot(), "bin", "kptune-static")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/kptune")
	build.Dir, build.Env = testbed.RepoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	buildah := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("buildah", append([]string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"), "--storage-driver", "vfs"}, args...)...)
		cmd.Dir = testbed.RepoRoot()
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				out = ee.Stderr
			}
			t.Fatalf("buildah %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	buildah("bud", "-q", "-f", "Dockerfile", "-t", "kptune:test", ".")
	var image struct {
		OCIv1 struct {
			Config struct {
				Entrypoint, Cmd []string
			}
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		}
	}
	if err := json.Unmarshal([]byte(buildah("inspect", "--type", "image", "kptune:test")), &image); err != nil {
		t.Fatal(err)
	}
	if c := image.OCIv1.Config; !slices.Equal(c.Entrypoint, []string{"/kptune"}) || !slices.Equal(c.Cmd, []string{"agent"}) || len(image.OCIv1.RootFS.DiffIDs) != 1 {
		t.Errorf("image config: entrypoint %q, cmd %q, %d layers; want [/kptune] [agent], one layer", c.Entrypoint, c.Cmd, len(image.OCIv1.RootFS.DiffIDs))
	}
	container := buildah("from", "kptune:test")
	root := buildah("mount", container)
	defer buildah("rm", container)
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	// buildah adds the empty mount points a container runtime fills in.
	if extra := slices.DeleteFunc(names, func(n string) bool {
		return n == "kptune" || n == "dev" || n == "proc" || n == "sys" || n == "etc" || n == "run"
	}); len(extra) > 0 {
		t.Errorf("the image holds more than the binary: %v", extra)
	}
	f, err := elf.Open(filepath.Join(root, "kptune"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the image's binary needs a dynamic loader: FROM scratch has none")
		}
	}
	out, err := exec.Command("chroot", root, "/kptune", "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "kptune ") {
		t.Fatalf("from the image's root: %v: %s", err, out)
	}
	size := buildah("images", "--format", "{{.Size}}", "kptune:test")
	t.Logf("image kptune:test: %s, entrypoint %q %q", size, image.OCIv1.Config.Entrypoint, image.OCIv1.Config.Cmd)
}
