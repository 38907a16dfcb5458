package testbed

import (
	"context"
	"testing"
	"time"
)

// TestFixturesHoldRealRunners checks that each fixture's runner paces its runs the way its
// generation does: the old one by a token bucket (burst 2, then one run a period), the new one by a
// gap of at least minInterval after each run.
func TestFixturesHoldRealRunners(t *testing.T) {
	NeedBuilds(t)
	ctx := context.Background()
	const period = 400 * time.Millisecond
	for _, tc := range []struct {
		build   Build
		fixture string
	}{
		{oldGen, AsyncRunner},
		{Build{Version: oldGen.Version, PIE: true}, AsyncRunner},
		{newGen, ProxyRunner},
	} {
		t.Run(tc.build.String()+"/"+tc.fixture, func(t *testing.T) {
			bin, err := tc.build.Fixture(ctx, tc.fixture)
			if err != nil {
				t.Fatal(err)
			}
			f, err := StartFixture(ctx, bin, "-min-sync-period", period.String(), "-trigger-rate", "50")
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			f.Stop()
			runs := f.Runs()
			if len(runs) < 2 {
				t.Fatalf("%d runs in 3s", len(runs))
			}
			span := runs[len(runs)-1].Sub(runs[0])
			// n runs need at least (n-1-burst) full periods after the burst; at 50 triggers/s the
			// runner never idles, so it needs no more than (n+1) periods.
			burst := 1
			if tc.fixture == ProxyRunner {
				burst = 0
			}
			n := len(runs)
			if lo := time.Duration(n-1-burst) * period; span < lo-50*time.Millisecond {
				t.Errorf("%d runs in %v: faster than one per %v after a burst of %d", n, span, period, burst+1)
			}
			if hi := time.Duration(n+1) * period; span > hi {
				t.Errorf("%d runs in %v: slower than one per %v", n, span, period)
			}
			t.Logf("%d runs in %v", n, span)
		})
	}
}
