package probe_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/locate"
	"kptune/internal/probe"
	"kptune/test/testbed"
)

func needRoot(t *testing.T) {
	t.Helper()
	testbed.NeedRoot(t, "loading BPF programs and attaching uprobes needs CAP_BPF and CAP_PERFMON")
}

func startFixture(t *testing.T, b testbed.Build, rate float64) (*testbed.FixtureProcess, locate.Target) {
	t.Helper()
	ctx := context.Background()
	path, err := b.Fixture(ctx, testbed.AsyncRunner)
	if err != nil {
		t.Fatal(err)
	}
	fx, err := testbed.StartFixture(ctx, path, "-min-sync-period", "1300ms", "-trigger-rate", fmt.Sprint(rate))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.Stop)
	bin, err := gobin.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bin.Close() })
	tg, err := locate.TargetOf(fx.PID, bin)
	if err != nil {
		t.Fatal(err)
	}
	return fx, tg
}

// TestLocateFixture captures the runner of a real async runner (k8s 1.33.5) as it is triggered, in
// static and PIE builds, and finds what the memory scan finds.
func TestLocateFixture(t *testing.T) {
	needRoot(t)
	for _, b := range []testbed.Build{{Version: "v1.33.5"}, {Version: "v1.33.5", PIE: true}} {
		t.Run(b.String(), func(t *testing.T) {
			fx, tg := startFixture(t, b, 20)
			c, err := probe.Locate(context.Background(), tg, fx.PID, fmt.Sprintf("/proc/%d/exe", fx.PID),
				probe.Options{Timeout: 10 * time.Second, Settle: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			scan, err := locate.Scan(context.Background(), tg)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Found) != 1 || len(scan) != 1 || c.Found[0] != scan[0] {
				t.Fatalf("uprobe found %+v, scan %+v", c.Found, scan)
			}
			if c.Found[0].MinInterval != 1300*time.Millisecond || !c.Found[0].Patchable {
				t.Errorf("runner %+v", c.Found[0])
			}
			if c.Hits == 0 || c.Samples == 0 {
				t.Errorf("found with %d hits and %d samples", c.Hits, c.Samples)
			}
			t.Logf("attach %v, first runner after %v, %d hits, %d samples", c.Attach, c.First, c.Hits, c.Samples)
		})
	}
}

// TestLocateQuiet: a runner that is never triggered times out with the reason and the way out, even
// while another process of the same executable is triggered (the program filters by thread group).
func TestLocateQuiet(t *testing.T) {
	needRoot(t)
	b := testbed.Build{Version: "v1.33.5"}
	quiet, tg := startFixture(t, b, 0)
	startFixture(t, b, 50) // same file, busy
	_, err := probe.Locate(context.Background(), tg, quiet.PID, fmt.Sprintf("/proc/%d/exe", quiet.PID),
		probe.Options{Timeout: time.Second, Settle: 100 * time.Millisecond})
	if !errors.Is(err, probe.ErrNoCall) {
		t.Fatalf("err = %v, want ErrNoCall", err)
	}
	for _, want := range []string{"no trigger while attached", "tryRun", "--locate=scan"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
