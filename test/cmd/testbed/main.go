// Command testbed starts and stops kptune's test bed by hand, and runs the demo.
//
//	testbed up [flags]   start a control plane and kube-proxies, leave them running, print how to reach them
//	testbed down         stop every test bed this machine runs (recorded under /run/kptune-testbed)
//	testbed demo         the README's demo: kptune inspect, set and reset on a real kube-proxy under churn
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/test/testbed"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "testbed:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: testbed up|down|demo [flags]")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "up":
		return up(ctx, args[1:])
	case "down":
		return testbed.CleanupAll()
	case "demo":
		return demo(ctx, args[1:])
	default:
		return fmt.Errorf("unknown command %q: use up, down or demo", args[0])
	}
}

type kpFlags struct {
	versions  string
	mode      string
	minSync   time.Duration
	sync      time.Duration
	dualStack bool
	services  int
	endpoints int
}

func (k *kpFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.versions, "kube-proxy", "v1.33.5", "comma-separated k8s versions: one kube-proxy each (build flavours as VERSION+pie+cgo+debug)")
	fs.StringVar(&k.mode, "mode", testbed.IPTables, "proxy mode: iptables, nftables or ipvs")
	fs.DurationVar(&k.minSync, "min-sync-period", time.Second, "kube-proxy's --*-min-sync-period")
	fs.DurationVar(&k.sync, "sync-period", 30*time.Second, "kube-proxy's --*-sync-period")
	fs.BoolVar(&k.dualStack, "dual-stack", false, "give the nodes IPv6 addresses too (two proxiers a kube-proxy)")
	fs.IntVar(&k.services, "services", 200, "Services to load")
	fs.IntVar(&k.endpoints, "endpoints", 5, "endpoints a Service")
}

// parseBuild reads "v1.33.5+pie+cgo".
func parseBuild(s string) (testbed.Build, error) {
	parts := strings.Split(strings.TrimSpace(s), "+")
	b := testbed.Build{Version: parts[0]}
	for _, p := range parts[1:] {
		switch {
		case p == "pie":
			b.PIE = true
		case p == "cgo":
			b.CGO = true
		case p == "debug":
			b.Debug = true
		case strings.HasPrefix(p, "go"):
			b.Go = p
		default:
			return b, fmt.Errorf("unknown build flavour %q in %q: use pie, cgo, debug or goX.Y.Z", p, s)
		}
	}
	return b, nil
}

func (k *kpFlags) start(ctx context.Context, c *testbed.Cluster) ([]*testbed.KubeProxy, error) {
	if err := c.Load(ctx, k.services, k.endpoints); err != nil {
		return nil, err
	}
	var kps []*testbed.KubeProxy
	for _, v := range strings.Split(k.versions, ",") {
		b, err := parseBuild(v)
		if err != nil {
			return nil, err
		}
		fmt.Printf("starting kube-proxy %s (%s, min-sync-period %v, sync-period %v)\n", b, k.mode, k.minSync, k.sync)
		kp, err := c.StartKubeProxy(ctx, testbed.KubeProxyOptions{
			Build: b, Mode: k.mode, MinSyncPeriod: k.minSync, SyncPeriod: k.sync, DualStack: k.dualStack,
		})
		if err != nil {
			return nil, err
		}
		kps = append(kps, kp)
	}
	for _, kp := range kps {
		if err := kp.WaitSynced(ctx, 1, 3*time.Minute); err != nil {
			return nil, err
		}
	}
	return kps, nil
}

func up(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var k kpFlags
	k.register(fs)
	dir := fs.String("dir", "", "directory for certificates, data and logs (default: a new temporary one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := testbed.Up(ctx, testbed.ClusterOptions{Dir: *dir, Detach: true, Progress: os.Stdout})
	if err != nil {
		return err
	}
	kps, err := k.start(ctx, c)
	if err != nil {
		_ = c.Down()
		return err
	}
	fmt.Printf("\ntest bed %s is up; files in %s\n", c.ID, c.Dir)
	fmt.Printf("  API server:  ip netns exec %s curl -s --cacert %[2]s/ca.crt --cert %[2]s/admin.crt --key %[2]s/admin.key https://127.0.0.1:6443/api/v1/nodes\n", c.NS, c.Dir)
	for _, kp := range kps {
		fmt.Printf("  kube-proxy %s: pid %d, namespace %s, log %s\n", kp.Node, kp.PID(), kp.NS, kp.Log())
		fmt.Printf("    metrics: ip netns exec %s curl -s http://%s/metrics\n", kp.NS, testbed.MetricsAddress)
	}
	fmt.Println("  stop it:     test/cluster/down.sh")
	return nil
}

func demo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var k kpFlags
	k.register(fs)
	rate := fs.Float64("churn", 20, "EndpointSlice changes a second")
	window := fs.Duration("window", 30*time.Second, "how long each measurement lasts")
	to := fs.Duration("set", 10*time.Second, "the minimum sync period kptune sets")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Println("== kptune demo: retune a real kube-proxy, fed by a real API server, under churn, without a restart")
	kptune, err := testbed.Kptune()
	if err != nil {
		return err
	}
	c, err := testbed.Up(ctx, testbed.ClusterOptions{Progress: os.Stdout})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("tearing the test bed down")
		if err := c.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "testbed: down:", err)
		}
	}()
	fmt.Printf("loading %d Services x %d endpoints\n", k.services, k.endpoints)
	kps, err := k.start(ctx, c)
	if err != nil {
		return err
	}
	kp := kps[0]
	fmt.Printf("kube-proxy %s is syncing (pid %d, namespace %s)\n\n", kp.Options.Build, kp.PID(), kp.NS)
	state := filepath.Join(c.Dir, "kptune-state")
	pid := strconv.Itoa(kp.PID())
	if err := show(ctx, kptune, "inspect", "--pid", pid); err != nil {
		return err
	}

	churn, err := c.Churn(ctx, testbed.ChurnOptions{Rate: *rate, Services: k.services, Endpoints: k.endpoints})
	if err != nil {
		return err
	}
	fmt.Printf("churning %.0f EndpointSlice changes/s\n", *rate)
	restarts := 0
	measure := func(label string) (float64, error) {
		s0, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(*window):
		}
		s1, err := kp.Metrics.Scrape(ctx)
		if err != nil {
			return 0, err
		}
		n0, sum0 := s0.Histogram(kpmetrics.SyncDuration)
		n1, sum1 := s1.Histogram(kpmetrics.SyncDuration)
		perMin := float64(n1-n0) / s1.Time.Sub(s0.Time).Minutes()
		avg := "-"
		if n1 > n0 {
			avg = time.Duration((sum1 - sum0) / float64(n1-n0) * float64(time.Second)).Round(100 * time.Microsecond).String()
		}
		if !kp.Running() {
			restarts++
		}
		fmt.Printf("  %-28s %6.1f syncs/min   avg sync %s   (%d changes so far)\n", label, perMin, avg, churn.Changes())
		return perMin, nil
	}
	before, err := measure(fmt.Sprintf("min-sync-period %v:", k.minSync))
	if err != nil {
		return err
	}
	fmt.Println()
	if err := show(ctx, kptune, "set", "--pid", pid, "--min-sync-period", to.String(), "--state-dir", state); err != nil {
		return err
	}
	time.Sleep(*to) // a burst stored in the token bucket drains
	during, err := measure(fmt.Sprintf("after kptune set %v:", *to))
	if err != nil {
		return err
	}
	fmt.Println()
	if err := show(ctx, kptune, "reset", "--pid", pid, "--state-dir", state); err != nil {
		return err
	}
	time.Sleep(*to) // the new-generation runner re-reads its period after its current wait
	after, err := measure("after kptune reset:")
	if err != nil {
		return err
	}
	changes, err := churn.Stop()
	if err != nil {
		return err
	}
	rules, err := kp.Rules()
	if err != nil {
		return err
	}
	if missing := testbed.MissingServices(rules, k.services); len(missing) > 0 {
		return fmt.Errorf("%d Services missing from kube-proxy's rules", len(missing))
	}
	if restarts > 0 || !kp.Running() {
		return fmt.Errorf("kube-proxy exited during the demo: see %s", kp.Log())
	}
	fmt.Printf("\nsyncs/min %.1f → %.1f (÷%.1f) → %.1f after reset; kube-proxy never restarted (pid %d); %d changes applied, all %d Services in its rules\n",
		before, during, before/max(during, 0.01), after, kp.PID(), changes, k.services)
	return nil
}

// show runs a kptune command, printing it and its output.
func show(ctx context.Context, bin string, args ...string) error {
	fmt.Printf("$ kptune %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kptune %s: %w", strings.Join(args, " "), err)
	}
	fmt.Println()
	return nil
}
