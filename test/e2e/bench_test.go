//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/test/testbed"
)

// TestBenchDeploy measures the deployed agent beside a loaded kube-proxy (make bench-e2e): for each
// repetition a fresh kube-proxy pod and a fresh agent pod, under steady churn throughout,
//   - helm install → the agent's pod Ready → the policy's period verified in kube-proxy's memory,
//     and the same after kube-proxy's pod is deleted under a running agent, from its first sync;
//   - the agent's CPU (its container's cpuacct cgroup) and memory (its RSS, anonymous and file-backed,
//     its peak, its cgroup's rss) over a window with the static policy, then one with the adaptive policy (which also
//     reads kube-proxy's metrics and CPU).
//
// KPTUNE_E2E_SCALE (5000x10), KPTUNE_E2E_REPS (5), KPTUNE_E2E_WINDOW (90s), KPTUNE_E2E_RATE (10
// changes/s) set its size.
func TestBenchDeploy(t *testing.T) {
	services, endpoints := scale(t)
	reps := envInt(t, "KPTUNE_E2E_REPS", 5)
	window := envDuration(t, "KPTUNE_E2E_WINDOW", 90*time.Second)
	rate := float64(envInt(t, "KPTUNE_E2E_RATE", 10))
	ctx := context.Background()
	w := setUp(t)
	start := time.Now()
	must(t, w.c.Load(ctx, services, endpoints))
	t.Logf("loaded %d Services × %d endpoints in %v", services, endpoints, time.Since(start).Round(time.Second))
	w.apply(ctx, filepath.Join("testdata", "kube-proxy.yaml"), map[string]string{
		"IMAGE": w.kubeProxyImage, "SERVER": "https://" + testbed.APIAddress + ":6443", "MIN_SYNC_PERIOD": "1s"})
	pid, _ := w.waitKubeProxy(ctx, 0, 5*time.Minute)
	churn, err := w.c.Churn(ctx, testbed.ChurnOptions{Rate: rate, Services: services, Endpoints: endpoints})
	must(t, err)
	t.Logf("machine: %s; kube-proxy %s iptables (legacy) in kubeadm's DaemonSet, kubelet %s; scale %d×%d; churn %g changes/s; window %v",
		machine(), KubeProxyBuild, testbed.KubeletVersion, services, endpoints, rate, window)

	results := map[string][]float64{}
	record := func(rep int, name string, v float64) {
		results[name] = append(results[name], v)
		t.Logf("rep %d %s %.4g", rep, name, v)
	}
	install := []string{"install", "kptune", w.chart, "--namespace", "kptune", "--create-namespace",
		"--set", "image.pullPolicy=Never", "--set", "stateDir=" + w.stateDir,
		"--set", "config.policy=static", "--set", "config.minSyncPeriod=5s"}
	for rep := 1; rep <= reps; rep++ {
		// A fresh kube-proxy, synced, before the agent is installed.
		old := pid
		deleted := time.Now()
		w.deleteKubeProxyPod(ctx)
		var synced time.Time
		pid, synced = w.waitKubeProxy(ctx, old, 5*time.Minute)
		record(rep, "kube_proxy_pod_delete_to_first_sync_s", synced.Sub(deleted).Seconds())

		t0 := time.Now()
		w.helm(ctx, install...)
		ready := w.eventually(2*time.Minute, "the agent's pod is Ready", func() (bool, string) {
			_, ok := w.agentPod(ctx, "kptune")
			return ok, ""
		})
		w.eventually(2*time.Minute, "kube-proxy holds 5s", func() (bool, string) { return w.holds(pid, 5*time.Second) })
		record(rep, "install_to_ready_s", ready.Seconds())
		record(rep, "install_to_verified_write_s", time.Since(t0).Seconds())

		// kube-proxy's pod deleted under a running agent: from the new one's first sync to the write.
		old = pid
		w.deleteKubeProxyPod(ctx)
		pid, synced = w.waitKubeProxy(ctx, old, 5*time.Minute)
		w.eventually(2*time.Minute, "the new kube-proxy holds 5s", func() (bool, string) { return w.holds(pid, 5*time.Second) })
		record(rep, "new_kube_proxy_first_sync_to_verified_write_s", time.Since(synced).Seconds())

		for _, pol := range []string{"static", "adaptive"} {
			if pol == "adaptive" {
				w.helm(ctx, "upgrade", "kptune", w.chart, "--namespace", "kptune", "--reuse-values", "--set", "config.policy=adaptive")
				// The new pod, past its first decision window.
				w.eventually(2*time.Minute, "the adaptive agent decides", func() (bool, string) {
					_, body, err := w.agentGet(ctx, "/metrics")
					return err == nil && strings.Contains(body, `source="adaptive"`), ""
				})
			}
			agent := w.agentPID(t)
			cpu0, kp0 := cgroupCPU(t, agent), cgroupCPU(t, pid)
			t1 := time.Now()
			time.Sleep(window)
			wall := time.Since(t1).Seconds()
			if w.agentPID(t) != agent {
				t.Fatalf("the agent restarted during the window")
			}
			record(rep, pol+"_agent_cpu_percent", 100*(cgroupCPU(t, agent)-cpu0)/wall)
			record(rep, pol+"_kube_proxy_cpu_percent", 100*(cgroupCPU(t, pid)-kp0)/wall)
			mem := procMemory(t, agent)
			record(rep, pol+"_agent_rss_mib", mem["VmRSS"])
			record(rep, pol+"_agent_rss_anon_mib", mem["RssAnon"])
			record(rep, pol+"_agent_rss_file_mib", mem["RssFile"])
			record(rep, pol+"_agent_peak_rss_mib", mem["VmHWM"])
			record(rep, pol+"_agent_cgroup_rss_mib", cgroupRSS(t, agent))
		}
		w.helm(ctx, "uninstall", "kptune", "--namespace", "kptune", "--wait")
	}
	n, err := churn.Stop()
	t.Logf("churn: %d changes (%v)", n, err)

	names := make([]string, 0, len(results))
	for k := range results {
		names = append(names, k)
	}
	slices.Sort(names)
	t.Logf("%-48s %10s %10s %10s %3s", "figure", "median", "min", "max", "n")
	for _, k := range names {
		s := slices.Clone(results[k])
		slices.Sort(s)
		t.Logf("%-48s %10.4g %10.4g %10.4g %3d", k, median(s), s[0], s[len(s)-1], len(s))
	}
}

func median(s []float64) float64 {
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func scale(t *testing.T) (int, int) {
	v := os.Getenv("KPTUNE_E2E_SCALE")
	if v == "" {
		v = "5000x10"
	}
	a, b, ok := strings.Cut(v, "x")
	s, err1 := strconv.Atoi(a)
	e, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || s <= 0 || e <= 0 {
		t.Fatalf("KPTUNE_E2E_SCALE=%q: want SERVICESxENDPOINTS, e.g. 5000x10", v)
	}
	return s, e
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	cpus := strings.Count(string(b), "\nprocessor") + 1
	model := ""
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			break
		}
	}
	return fmt.Sprintf("%d CPUs (%s)", cpus, model)
}

// agentPID is the agent's process among the node's pods.
func (w *world) agentPID(t *testing.T) int {
	procs := w.podProcesses("kptune")
	if len(procs) != 1 {
		t.Fatalf("%d kptune processes in the node's pods, want 1", len(procs))
	}
	return procs[0].PID
}

// cgroupOf is the path of pid's cgroup in a v1 hierarchy.
func cgroupOf(t *testing.T, pid int, hierarchy string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), hierarchy) {
			return filepath.Join("/sys/fs/cgroup", hierarchy, parts[2])
		}
	}
	t.Fatalf("pid %d has no %s cgroup", pid, hierarchy)
	return ""
}

// cgroupCPU is the CPU time, in seconds, of pid's container (its cpuacct cgroup).
func cgroupCPU(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(filepath.Join(cgroupOf(t, pid, "cpuacct"), "cpuacct.usage"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		t.Fatal(err)
	}
	return ns / 1e9
}

// cgroupRSS is the anonymous memory of pid's container, in MiB (memory.stat's rss).
func cgroupRSS(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(filepath.Join(cgroupOf(t, pid, "memory"), "memory.stat"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rss "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n / (1 << 20)
		}
	}
	t.Fatalf("no rss in memory.stat of pid %d", pid)
	return 0
}

// procMemory is pid's memory figures from /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile), in
// MiB: RssFile is mostly the pages of its own executable.
func procMemory(t *testing.T, pid int) map[string]float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			m[strings.TrimSuffix(f[0], ":")] = kb / 1024
		}
	}
	return m
}
