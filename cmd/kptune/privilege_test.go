package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"kptune/internal/target"
	"kptune/test/testbed"
)

// asUser runs kptune as uid/gid 65534 (nobody) holding exactly caps (e.g. "sys_ptrace,bpf"), in
// every capability set, so that it keeps them across execve without being root.
func asUser(t *testing.T, caps string, args ...string) (int, string, string) {
	t.Helper()
	set := "-all"
	for _, c := range strings.Split(caps, ",") {
		if c != "" {
			set += ",+" + c
		}
	}
	return runCmd(t, exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, kptune}, args...)...))
}

// TestLeastPrivilege measures what each command needs against a real kube-proxy (root, as in a
// cluster) under churn: kptune runs as an unprivileged user with exactly the capabilities of each
// row. Each command works with its set, and without one of them fails with one line naming the
// missing capability, changing nothing. The matrix is logged (README, "Reliability").
func TestLeastPrivilege(t *testing.T) {
	testbed.NeedRoot(t, "to run kptune with chosen capabilities, and the test bed")
	ctx := context.Background()
	c, kps := testbed.Start(t, 20, 3, testbed.KubeProxyOptions{Build: testbed.Build{Version: "v1.33.5"}, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second})
	kp := kps[0]
	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: 10, Services: 20, Endpoints: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	state, err := os.MkdirTemp("", "kptune-priv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	if err := os.Chown(state, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(kp.PID())
	period := func() time.Duration {
		found, err := target.Runners(ctx, kp.PID())
		if err != nil {
			t.Fatal(err)
		}
		return found[0].MinInterval
	}
	rows := []struct {
		command string
		args    []string
		caps    string   // what it needs
		without []string // each missing one must be named
		changes bool
	}{
		{"inspect", []string{"inspect", "--pid", pid}, "sys_ptrace", []string{"sys_ptrace"}, false},
		{"set", []string{"set", "--pid", pid, "--min-sync-period", "2s", "--state-dir", state}, "sys_ptrace", []string{"sys_ptrace"}, true},
		{"reset", []string{"reset", "--pid", pid, "--state-dir", state}, "sys_ptrace", []string{"sys_ptrace"}, true},
		// The kernel's uprobe PMU asks for CAP_SYS_ADMIN itself: CAP_BPF and CAP_PERFMON are not
		// enough (measured here, Linux 6.18).
		{"inspect --locate=uprobe", []string{"inspect", "--pid", pid, "--locate", "uprobe", "--probe-timeout", "20s"}, "sys_ptrace,sys_admin", []string{"sys_ptrace", "sys_admin"}, false},
	}
	var matrix []string
	for _, r := range rows {
		before := period()
		for _, missing := range r.without {
			var keep []string
			for _, c := range strings.Split(r.caps, ",") {
				if c != missing {
					keep = append(keep, c)
				}
			}
			code, _, stderr := asUser(t, strings.Join(keep, ","), r.args...)
			name := "CAP_" + strings.ToUpper(missing)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code == 0 || len(lines) != 1 || !strings.Contains(stderr, name) {
				t.Errorf("%s without %s: exit %d, stderr %q; want one line naming %s", r.command, name, code, stderr, name)
			}
			if p := period(); p != before {
				t.Errorf("%s without %s changed the period %v → %v", r.command, name, before, p)
			}
			matrix = append(matrix, fmt.Sprintf("%-24s without %-14s exit %d: %s", r.command, name, code, strings.TrimSpace(stderr)))
		}
		code, _, stderr := asUser(t, r.caps, r.args...)
		if code != 0 {
			t.Errorf("%s with %s: exit %d: %s", r.command, r.caps, code, stderr)
		}
		if r.caps == "sys_ptrace,sys_admin" {
			// and CAP_BPF with CAP_PERFMON instead of CAP_SYS_ADMIN: refused, naming it.
			code, _, stderr := asUser(t, "sys_ptrace,bpf,perfmon", r.args...)
			if code == 0 || !strings.Contains(stderr, "missing CAP_SYS_ADMIN") {
				t.Errorf("%s with CAP_BPF and CAP_PERFMON: exit %d: %s", r.command, code, stderr)
			}
			matrix = append(matrix, fmt.Sprintf("%-24s with    %-22s exit %d: %s", r.command, "SYS_PTRACE,BPF,PERFMON", code, strings.TrimSpace(stderr)))
		}
		after := period()
		if r.changes == (after == before) {
			t.Errorf("%s with %s: period %v → %v", r.command, r.caps, before, after)
		}
		matrix = append(matrix, fmt.Sprintf("%-24s with    %-22s exit %d (period %v → %v)", r.command, strings.ToUpper(r.caps), code, before, after))
	}
	t.Logf("privilege matrix (uid 65534, kube-proxy as root):\n%s", strings.Join(matrix, "\n"))
}
