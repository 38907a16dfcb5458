package target

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/locate"
	"kptune/test/testbed"
)

func needRoot(t *testing.T) {
	t.Helper()
	testbed.NeedRoot(t, "reading another process's memory needs CAP_SYS_PTRACE")
}

// TestLocateFixtures finds the one runner of each fixture process, of both generations and several
// builds, with exactly the values it was built with.
func TestLocateFixtures(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	const period, retry = 3700 * time.Millisecond, 47 * time.Second
	for _, tc := range []struct {
		build   testbed.Build
		fixture string
		period  time.Duration
	}{
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, period},
		{testbed.Build{Version: "v1.33.5", PIE: true}, testbed.AsyncRunner, period},
		{testbed.Build{Version: "v1.33.5", CGO: true}, testbed.AsyncRunner, period},
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, 0},
		{testbed.Build{Version: "v1.37.2"}, testbed.ProxyRunner, period},
	} {
		t.Run(tc.build.String()+"/"+tc.period.String(), func(t *testing.T) {
			path, err := tc.build.Fixture(ctx, tc.fixture)
			if err != nil {
				t.Fatal(err)
			}
			fx, err := testbed.StartFixture(ctx, path, "-min-sync-period", tc.period.String(), "-max-interval", "1h", "-trigger-rate", "5")
			if err != nil {
				t.Fatal(err)
			}
			defer fx.Stop()
			b, err := gobin.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			tg, err := locate.TargetOf(fx.PID, b)
			if err != nil {
				t.Fatal(err)
			}
			found, err := locate.Scan(ctx, tg)
			if err != nil {
				t.Fatal(err)
			}
			l := tg.Layout
			if l.Source != "type descriptors" {
				t.Errorf("layout from %s, want type descriptors", l.Source)
			}
			if len(found) != 1 {
				t.Fatalf("found %d runners, want 1: %+v", len(found), found)
			}
			f := found[0]
			if f.MinInterval != tc.period || f.MaxInterval != time.Hour {
				t.Errorf("min %v max %v, want %v and 1h", f.MinInterval, f.MaxInterval, tc.period)
			}
			switch {
			case tc.fixture == testbed.ProxyRunner:
				if f.RetryInterval != 30*time.Second || !f.Patchable {
					t.Errorf("retry %v patchable %v, want the fixture's 30s default and patchable", f.RetryInterval, f.Patchable)
				}
			case tc.period == 0:
				if f.Patchable || !strings.Contains(f.Reason, "no-op") {
					t.Errorf("a runner started at 0 is patchable=%v (%q)", f.Patchable, f.Reason)
				}
			default:
				want := locate.QPSFor(tc.period)
				if f.QPS != want || f.Limit != float64(want) || f.Burst != 2 || !f.Patchable || f.Reason != "" {
					t.Errorf("qps %v limit %v burst %d patchable %v %q, want qps %v limit %v burst 2",
						f.QPS, f.Limit, f.Burst, f.Patchable, f.Reason, want, float64(want))
				}
			}
		})
	}
}

// TestOpenBadInput: a PID that names no process, or a process that is not a kube-proxy, is refused
// with a line that says what to do.
func TestOpenBadInput(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		pid  int
		want string
	}{
		{999999999, "no process 999999999"},
		{os.Getpid(), "not a kube-proxy"},
	} {
		if _, err := Open(context.Background(), tc.pid); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pid %d: got %v, want %q", tc.pid, err, tc.want)
		}
	}
}

// TestVersionFromStringVars finds the version injected with -X in stripped kube-proxy builds whose
// build settings do not record -ldflags (-trimpath, as releases are built).
func TestVersionFromStringVars(t *testing.T) {
	testbed.NeedBuilds(t)
	for _, b := range []testbed.Build{{Version: "v1.33.5"}, {Version: "v1.37.2"}} {
		path, err := b.KubeProxy(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		bin, err := gobin.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range bin.Build.Settings {
			if s.Key == "-ldflags" {
				t.Fatalf("%s records -ldflags: the test needs a -trimpath build", b)
			}
		}
		start := time.Now()
		got := bin.StringVars(6, 60, gitVersionRE.MatchString)
		t.Logf("%s: %v in %v", b, got, time.Since(start))
		if len(got) != 1 || got[0] != b.Version {
			t.Errorf("%s: string variables like a version: %v, want just %s", b, got, b.Version)
		}
		if v := K8sVersion(bin); v != b.Version {
			t.Errorf("%s: K8sVersion %s", b, v)
		}
		bin.Close()
	}
}
