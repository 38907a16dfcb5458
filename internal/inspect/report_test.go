package inspect

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"kptune/internal/target"
	"kptune/test/testbed"
)

// TestReport: the report of two real kube-proxies, one of each runner generation, by PID and over
// the whole node, holds their versions, generations and runners with the values they were started
// with, the same either way and through JSON; another process is no part of it.
func TestReport(t *testing.T) {
	testbed.NeedRoot(t, "reading another process's memory needs CAP_SYS_PTRACE")
	ctx := context.Background()
	_, kps := testbed.Start(t, 10, 2,
		testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: 3700 * time.Millisecond, SyncPeriod: 47 * time.Second},
		testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.37.2"}, MinSyncPeriod: 3700 * time.Millisecond, SyncPeriod: 47 * time.Second})
	scan := target.LocateOptions{Locator: target.ByScan}
	all, err := All(ctx, scan)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		kp         *testbed.KubeProxy
		generation string
		retry      string
		qps        bool
	}{
		{kps[0], "async", "", true},
		{kps[1], "runner", "47s", false},
	} {
		p, err := PID(ctx, c.kp.PID(), scan)
		if err != nil {
			t.Fatal(err)
		}
		if p.K8sVersion != c.kp.Options.Build.Version || p.Generation != c.generation || p.ProxyMode != "iptables" || p.Locator != "scan" ||
			p.LayoutSource != "type descriptors" || p.Error != "" || len(p.Runners) != 1 {
			t.Fatalf("pid %d: %+v", p.PID, p)
		}
		r := p.Runners[0]
		if r.MinInterval != "3.7s" || r.MaxInterval != "1h0m0s" || r.RetryInterval != c.retry || (r.QPS != nil) != c.qps || !r.Patchable {
			t.Errorf("pid %d: runner %+v", p.PID, r)
		}
		var listed *Process
		for i := range all.Processes {
			if all.Processes[i].PID == p.PID {
				listed = &all.Processes[i]
			}
		}
		a, _ := json.Marshal(p)
		b, _ := json.Marshal(listed)
		if listed == nil || string(a) != string(b) {
			t.Errorf("pid %d by PID:\n%s\nin the node's report:\n%s", p.PID, a, b)
		}
	}
	for _, p := range all.Processes {
		if p.PID != kps[0].PID() && p.PID != kps[1].PID() && p.K8sVersion == "" {
			t.Errorf("a process that is no kube-proxy in the report: %+v", p)
		}
	}
}
