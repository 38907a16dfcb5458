package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kptune/internal/agent"
	"kptune/internal/state"
)

type agentFlags struct {
	config, listen, kubeconfig, node, stateDir, policy, logLevel string
	minSync, interval                                            time.Duration
	resetOnExit                                                  bool
}

func newAgentCommand() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Keep every kube-proxy of this node at the period a policy chooses",
		Long: "agent runs on a node (a DaemonSet) and keeps its kube-proxies at the minimum sync period the\n" +
			"policy chooses: static (a fixed period) or adaptive (the lowest period that keeps kube-proxy's\n" +
			"CPU under a budget). The Node annotation " + agent.Annotation + " overrides the policy for one node.\n" +
			"It re-applies the period when kube-proxy restarts, reloads --config when the file changes, serves\n" +
			"Prometheus metrics, /healthz and /readyz on --listen, and records an Event on its Node for each change.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", f.logLevel)
			}
			cfg := agent.DefaultConfig()
			cfg.PolicyName = f.policy
			cfg.MinSyncPeriod = metav1.Duration{Duration: f.minSync}
			node := f.node
			if node == "" {
				node = os.Getenv("NODE_NAME")
			}
			a, err := agent.New(agent.Options{ConfigPath: f.config, Config: cfg, Interval: f.interval, Listen: f.listen,
				Kubeconfig: f.kubeconfig, NodeName: node, StateDir: f.stateDir, ResetOnExit: f.resetOnExit,
				Log: slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return a.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "the policy's configuration file (YAML; reloaded when it changes); overrides --policy and --min-sync-period")
	fl.StringVar(&f.policy, "policy", "static", "static or adaptive, without --config")
	fl.DurationVar(&f.minSync, "min-sync-period", time.Second, "the static policy's period, without --config")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:9842", "address of the metrics, /healthz and /readyz server (empty: none)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for the API server (default: in-cluster; none outside a cluster)")
	fl.StringVar(&f.node, "node-name", "", "this node's name (default: $NODE_NAME); only kube-proxies serving it are managed")
	fl.DurationVar(&f.interval, "interval", 2*time.Second, "how often to look over the node's kube-proxies")
	fl.StringVar(&f.stateDir, "state-dir", state.DefaultDir, "where original values, locks and the audit log are kept")
	fl.BoolVar(&f.resetOnExit, "reset-on-exit", false, "restore the periods kube-proxy started with when the agent stops")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
