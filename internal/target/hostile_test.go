package target

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/test/testbed"
)

// TestFakeKubeProxies: processes built to pass for a kube-proxy, as any tenant of a node could run
// them, are refused with a reason, without a panic and without unbounded work.
func TestFakeKubeProxies(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	start := func(tags string, uid int, args ...string) int {
		t.Helper()
		h, err := testbed.StartHostile(tags, uid, args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Stop)
		return h.PID
	}
	refused := func(what string, pid int, want string) {
		t.Helper()
		p, err := Open(ctx, pid)
		if err == nil {
			p.Close()
			t.Fatalf("%s: taken for a kube-proxy", what)
		}
		if !errors.Is(err, ErrNotKubeProxy) || !errors.Is(err, ErrSuspect) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v; want a refusal as a suspect kube-proxy saying %q", what, err, want)
		}
		t.Logf("%s: %v", what, err)
	}

	// Its main package is kube-proxy's, and nothing else is.
	refused("a 30-line fake", start(testbed.FakeKubeProxy, 0), "k8s.io/client-go")
	// It passes by its build information, and runs as nobody.
	refused("a fake run by a user", start(testbed.FakeWithClientGo, 65534), "runs as uid 65534")

	// It passes for a kube-proxy, and its runner type is 2^49 bytes: the layout is refused, and
	// nothing sized by it is allocated.
	pid := start(testbed.FakeHugeRunner, 0)
	p, err := Open(ctx, pid)
	if err != nil {
		t.Fatalf("the fake with client-go, as root: %v", err)
	}
	defer p.Close()
	if _, err := layout.Of(p.Binary()); err == nil || !strings.Contains(err.Error(), "larger than kube-proxy's") {
		t.Errorf("the layout of a runner of 2^49 bytes: %v", err)
	}
	if err := p.Locate(ctx, LocateOptions{Locator: ByScan}); !errors.Is(err, layout.ErrNoLayout) {
		t.Errorf("runners located in the fake with a 2^49-byte runner: %v", err)
	} else {
		t.Logf("locate: %v", err)
	}
	if _, err := p.Revalidate(); !errors.Is(err, ErrNoRunner) {
		t.Errorf("the fake's runners read again after a failed locate: %v", err)
	}

	// It passes for a kube-proxy, with a runner type of the right shape, and maps 64 GiB (one page
	// touched a GiB): the scan refuses it at once rather than reading 64 GiB.
	pid = start(testbed.FakeWithClientGo, 0, "-map", "68719476736")
	big, err := Open(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	begin := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = big.Locate(sctx, LocateOptions{Locator: ByScan})
	took := time.Since(begin)
	if !errors.Is(err, locate.ErrScanLimit) {
		t.Fatalf("the scan of a process with 64 GiB mapped: %v after %v; want the scan's limit", err, took)
	}
	if took > 2*time.Second {
		t.Errorf("refused after %v, want at once", took)
	}
	t.Logf("64 GiB mapped: %v after %v", err, took.Round(time.Millisecond))
}
