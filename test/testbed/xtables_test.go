package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestXTJumps loads a nat table with iptables-legacy-restore into a namespace of its own and reads
// the jumps back from the kernel: the ones the rules make, and none they do not.
func TestXTJumps(t *testing.T) {
	NeedRoot(t, "network namespaces and raw sockets need CAP_SYS_ADMIN and CAP_NET_RAW")
	if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
		t.Skip("iptables-legacy-restore is not installed: run ./test/setup.sh")
	}
	ns := fmt.Sprintf("kptune-xt-%d", os.Getpid())
	if err := addNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = delNetns(ns) })
	// KUBE-SVC-B is listed before KUBE-SVC-A and jumps to a chain defined before it and one after
	// it; the built-in PREROUTING jumps too, after the user chains in the file.
	rules := `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SVC-B - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-SEP-3 - [0:0]
-A KUBE-SEP-1 -p tcp -j DNAT --to-destination 10.0.0.1:8080
-A KUBE-SVC-B -m statistic --mode random --probability 0.5 -j KUBE-SEP-1
-A KUBE-SVC-B -j KUBE-SEP-3
-A KUBE-SVC-A -j KUBE-SEP-2
-A KUBE-SEP-2 -p tcp -j DNAT --to-destination 10.0.0.2:8080
-A KUBE-SEP-3 -p tcp -j DNAT --to-destination 10.0.0.3:8080
-A PREROUTING -j KUBE-SVC-A
COMMIT
`
	cmd := exec.Command("ip", "netns", "exec", ns, "iptables-legacy-restore")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-legacy-restore: %v: %s", err, out)
	}
	for _, c := range []struct {
		from, to string
		want     bool
	}{
		{"KUBE-SVC-B", "KUBE-SEP-1", true},
		{"KUBE-SVC-B", "KUBE-SEP-3", true},
		{"KUBE-SVC-B", "KUBE-SEP-2", false},
		{"KUBE-SVC-A", "KUBE-SEP-2", true},
		{"KUBE-SVC-A", "KUBE-SEP-1", false},
		{"KUBE-SEP-1", "KUBE-SEP-2", false},
		{"PREROUTING", "KUBE-SVC-A", false}, // built-in chains are not read
		{"KUBE-SVC-C", "KUBE-SEP-1", false}, // no such chain
	} {
		got, cpu, err := xtJumps(ns, "nat", c.from, c.to)
		if err != nil {
			t.Fatal(err)
		}
		if cpu <= 0 {
			t.Errorf("reading the table took no CPU time (%v): the probe's cost would go unrecorded", cpu)
		}
		if got != c.want {
			t.Errorf("%s jumps to %s: %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if _, _, err := xtJumps(ns, "nosuchtable", "A", "B"); err == nil {
		t.Error("a table that does not exist: no error")
	}
}

// TestJumpsInTruncated: a blob cut short is an error, not a read past its end.
func TestJumpsInTruncated(t *testing.T) {
	blob := make([]byte, 200)
	blob[iptEntryTargetOffset] = 112
	blob[iptEntryNextOffset] = 250 // past the end
	if _, err := jumpsIn(blob, nil, "A", "B"); err == nil {
		t.Error("no error for an entry running past the blob")
	}
	if _, err := jumpsIn(blob[:50], nil, "A", "B"); err == nil {
		t.Error("no error for a blob shorter than an entry")
	}
}
