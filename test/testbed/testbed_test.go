package testbed

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// The builds `make test` runs on: the last release of the old runner and the newest of the new.
var (
	oldGen = Build{Version: "v1.33.5"}
	newGen = Build{Version: "v1.37.2"}
)

func needRoot(t *testing.T) {
	t.Helper()
	NeedRoot(t, "network namespaces, iptables and nftables")
	for _, tool := range []string{"ip", "iptables-save", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: run test/setup.sh", tool)
		}
	}
}

func TestBuildScriptRejectsBadInput(t *testing.T) {
	NeedBuilds(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"1.33"}, "not of the form v1.MINOR.PATCH"},
		{[]string{"v1.99.0"}, "does not serve k8s.io/kubernetes@v1.99.0"},
		{[]string{"v1.33.5", "--cmd", "kubectl"}, "one of kube-proxy, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet"},
		{[]string{"v1.33.5", "--fixture", "nope"}, "no fixture nope"},
		{[]string{"v1.33.5", "--go", "go-nonsense"}, "give a toolchain name"},
		{[]string{"v1.33.5", "--bogus"}, "unknown flag --bogus"},
	} {
		_, err := runScript(context.Background(), "test/kubeproxy/build.sh", tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("build.sh %v: got %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// TestKubeProxySyncsUnderChurn is the test bed end to end: a real control plane, kube-proxy of each
// runner generation in its own namespace (iptables with either backend and nftables single-stack on
// the old, nftables dual-stack on the new), loaded Services in their rules, syncs under churn, and
// nothing left behind.
func TestKubeProxySyncsUnderChurn(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	c, err := Up(ctx, ClusterOptions{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			_ = c.Down()
		}
	})

	const services, endpoints = 40, 5
	if err := c.Load(ctx, services, endpoints); err != nil {
		t.Fatal(err)
	}
	kps := []*KubeProxy{}
	for _, o := range []KubeProxyOptions{
		{Build: oldGen, Mode: IPTables, MinSyncPeriod: 500 * time.Millisecond, SyncPeriod: 47 * time.Second},
		{Build: newGen, Mode: NFTables, MinSyncPeriod: 500 * time.Millisecond, SyncPeriod: 47 * time.Second, DualStack: true},
		{Build: oldGen, Mode: IPTables, MinSyncPeriod: 500 * time.Millisecond, SyncPeriod: 47 * time.Second, IPTablesLegacy: true, CountExecs: true},
		// nftables before 1.37 (endpoint chains picked from a verdict map, as the churn bench runs it).
		{Build: oldGen, Mode: NFTables, MinSyncPeriod: 500 * time.Millisecond, SyncPeriod: 47 * time.Second},
	} {
		kp, err := c.StartKubeProxy(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		kps = append(kps, kp)
	}
	for _, kp := range kps {
		if err := kp.WaitSynced(ctx, 1, 90*time.Second); err != nil {
			t.Fatal(err)
		}
		waitRules(t, kp, services)
	}

	before := make([]uint64, len(kps))
	for i, kp := range kps {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before[i] = s.Syncs()
	}
	churn, err := c.Churn(ctx, ChurnOptions{Rate: 10, Services: services, Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	changes, err := churn.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if changes < 30 {
		t.Fatalf("churn applied %d changes in 6s at 10/s", changes)
	}
	for i, kp := range kps {
		s, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// At a 500ms minimum period under 10 changes/s, kube-proxy syncs about twice a second.
		if grew := s.Syncs() - before[i]; grew < 4 {
			t.Errorf("kube-proxy %s (%s) synced %d times in 6s of churn, want >= 4", kp.Node, kp.Options.Build, grew)
		} else {
			t.Logf("kube-proxy %s (%s, %s): %d syncs in 6s of churn (%d changes)", kp.Node, kp.Options.Build, kp.Options.Mode, grew, changes)
		}
		if !kp.Running() {
			t.Errorf("kube-proxy %s exited: %s", kp.Node, tail(kp.Log(), 5))
		}
		waitRules(t, kp, services)
	}
	if kps[1].Options.DualStack {
		rules, _ := kps[1].Rules()
		if !strings.Contains(rules, "table ip6 kube-proxy") {
			t.Errorf("the dual-stack kube-proxy wrote no IPv6 table")
		}
	}
	// The third wrote its rules with the legacy backend (none in nf_tables), through the counting
	// wrappers: one iptables-restore a sync at least.
	if out, err := inNetns(kps[2].NS, "iptables-nft-save"); err != nil || strings.Contains(string(out), "KUBE-SERVICES") {
		t.Errorf("the legacy kube-proxy's rules are in the nf_tables backend (%v):\n%.300s", err, out)
	}
	s, err := kps[2].Metrics.Scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	execs, err := kps[2].Execs()
	if err != nil || uint64(execs["iptables-restore"]) < s.Syncs() {
		t.Errorf("counted %v (%v) for %d syncs, want an iptables-restore a sync", execs, err, s.Syncs())
	}

	// HasEndpoint sees a new endpoint of one Service once kube-proxy has programmed it, and not
	// before: the address is new to the Service.
	ip, err := c.SetEndpoints(ctx, services-1, endpoints, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, kp := range kps {
		deadline := time.Now().Add(30 * time.Second)
		for {
			there, err := kp.HasEndpoint(services-1, ip)
			if err != nil {
				t.Fatal(err)
			}
			if there {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kube-proxy %s (%s): endpoint %s of %s never seen in its rules", kp.Node, kp.Options.Mode, ip, ServiceName(services-1))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if there, err := kp.HasEndpoint(services-1, "10.127.0.1"); there || err != nil {
			t.Errorf("kube-proxy %s: an address never given to the Service is seen (%v)", kp.Node, err)
		}
	}

	// Reach sees the change through the datapath: every connection to the Service from kube-proxy's
	// namespace lands on one of its new endpoints, and once it has none, none lands anywhere.
	fresh := EndpointAddresses(services-1, endpoints, 100)
	for _, kp := range kps {
		for range 5 {
			got, err := kp.Reach(ctx, services-1)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(fresh, got) {
				t.Errorf("kube-proxy %s (%s): a connection to %s reached %q, not one of %v", kp.Node, kp.Options.Mode, ServiceName(services-1), got, fresh)
			}
		}
	}
	if _, err := c.SetEndpoints(ctx, services-1, 0, 0); err != nil {
		t.Fatal(err)
	}
	for _, kp := range kps {
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := kp.Reach(ctx, services-1)
			if err != nil {
				t.Fatal(err)
			}
			if got == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kube-proxy %s (%s): connections to %s still reach %s after its endpoints were removed", kp.Node, kp.Options.Mode, ServiceName(services-1), got)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	pids := []int{c.api.pid(), c.etcd.pid()}
	for _, kp := range kps {
		pids = append(pids, kp.PID())
	}
	nss := []string{c.NS}
	for _, kp := range kps {
		nss = append(nss, kp.NS)
	}
	downed = true
	if err := c.Down(); err != nil {
		t.Fatalf("down: %v", err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d survived Down", pid)
		}
	}
	for _, ns := range nss {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s survived Down", ns)
		}
	}
	if _, err := os.Stat(c.Dir); err == nil {
		t.Errorf("directory %s survived Down", c.Dir)
	}
}

// waitRules waits until every loaded Service appears in kube-proxy's rules.
func waitRules(t *testing.T, kp *KubeProxy, services int) {
	t.Helper()
	var missing []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		rules, err := kp.Rules()
		if err != nil {
			t.Fatal(err)
		}
		if missing = MissingServices(rules, services); len(missing) == 0 {
			return
		}
	}
	t.Fatalf("kube-proxy %s: %d of %d Services missing from its rules (first %s)", kp.Node, len(missing), services, missing[0])
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
