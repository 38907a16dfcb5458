package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"kptune/internal/patch"
	"kptune/internal/state"
	"kptune/internal/tune"
)

type writeFlags struct {
	pid      int
	runner   string
	dryRun   bool
	force    bool
	output   string
	stateDir string
	pause    string
	locate   locateFlags

	minSync, retry, fullSync time.Duration
	burst                    int64
}

func (f *writeFlags) register(cmd *cobra.Command) {
	cmd.Flags().IntVar(&f.pid, "pid", 0, "the kube-proxy process (default: every kube-proxy on the node)")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "show what would be written, write nothing")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", state.DefaultDir, "where the original values, locks and audit log are kept")
	cmd.Flags().StringVar(&f.pause, "fault-pause", "", "STEP[:DURATION]: pause (a minute) at this step of the write: locked, located, recorded, checked, written, released (fault-injection tests only)")
	_ = cmd.Flags().MarkHidden("fault-pause")
	f.locate.register(cmd)
}

func (f *writeFlags) options(cmd *cobra.Command) (tune.Options, error) {
	lo, err := f.locate.options()
	if err != nil {
		return tune.Options{}, err
	}
	return tune.Options{PID: f.pid, Runner: f.runner, DryRun: f.dryRun, Force: f.force, Store: state.Store{Dir: f.stateDir},
		Pause: f.pauser(cmd.ErrOrStderr()), Log: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)), Locate: lo}, nil
}

// pauser is the --fault-pause hook: it says where it stops, so that a test can kill kptune there.
func (f *writeFlags) pauser(w io.Writer) func(string) {
	if f.pause == "" {
		return nil
	}
	at, d := f.pause, time.Minute
	if s, v, ok := strings.Cut(f.pause, ":"); ok {
		if pd, err := time.ParseDuration(v); err == nil {
			at, d = s, pd
		}
	}
	return func(step string) {
		if step == at {
			fmt.Fprintf(w, "paused at %s\n", step)
			time.Sleep(d)
		}
	}
}

func newSetCommand() *cobra.Command {
	var f writeFlags
	cmd := &cobra.Command{
		Use:   "set --min-sync-period D",
		Short: "Retune a running kube-proxy's minimum sync period in place",
		Long: "set writes what kube-proxy's constructor would have computed for the new period (minInterval and,\n" +
			"on k8s ≤ 1.33, the token bucket's qps and rate.Limiter's limit), inside one stop of the process of\n" +
			"well under a millisecond, after checking every invariant again. The first change of a process records\n" +
			"its original values for `kptune reset`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := f.options(cmd)
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			if fl.Changed("min-sync-period") {
				o.Change.MinInterval = &f.minSync
			}
			if fl.Changed("burst") {
				o.Change.Burst = &f.burst
			}
			if fl.Changed("retry-period") {
				o.Change.RetryInterval = &f.retry
			}
			if fl.Changed("full-sync-period") {
				o.Change.MaxInterval = &f.fullSync
			}
			if o.Change == (patch.Change{}) {
				return fmt.Errorf("nothing to set: give --min-sync-period (or --burst, --retry-period, --full-sync-period)")
			}
			if err := checkOutput(f.output); err != nil {
				return err
			}
			return report(cmd.OutOrStdout(), f.output)(tune.Set(cmd.Context(), o))
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&f.runner, "runner", "all", "the runner to change: an address from kptune inspect, or all")
	cmd.Flags().BoolVar(&f.force, "force", false, "set a period even where a queued change could wait close to 2 × syncPeriod (/healthz would answer 503), or with an unconfirmed built-in layout")
	cmd.Flags().DurationVar(&f.minSync, "min-sync-period", 0, "the new minimum sync period")
	cmd.Flags().Int64Var(&f.burst, "burst", 2, "the token bucket's burst (k8s ≤ 1.33)")
	cmd.Flags().DurationVar(&f.retry, "retry-period", 0, "the retry period after a failed sync (k8s ≥ 1.34)")
	cmd.Flags().DurationVar(&f.fullSync, "full-sync-period", 0, "the period of full syncs, the runner's maxInterval (k8s ≥ 1.34)")
	return cmd
}

func newResetCommand() *cobra.Command {
	var f writeFlags
	cmd := &cobra.Command{
		Use:   "reset",
		Short: "Restore the values kube-proxy started with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(f.output); err != nil {
				return err
			}
			o, err := f.options(cmd)
			if err != nil {
				return err
			}
			return report(cmd.OutOrStdout(), f.output)(tune.Reset(cmd.Context(), o))
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&f.force, "force", false, "restore even where a rail refuses the recorded value, or with an unconfirmed built-in layout")
	return cmd
}

// report prints what was done, also when some kube-proxies failed (each with its error), and
// returns the error: the exit status is non-zero if any process failed.
func report(out io.Writer, format string) func(tune.Result, error) error {
	return func(res tune.Result, err error) error {
		if len(res.Processes) > 0 {
			if perr := printResult(out, format, res); perr != nil {
				return errors.Join(err, perr)
			}
		}
		return err
	}
}

func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return fmt.Errorf("unknown output format %q: use table or json", o)
	}
	return nil
}

func printResult(out io.Writer, format string, res tune.Result) error {
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tRUNNER\tOLD\tNEW\tWRITTEN\tSTOPPED")
	for _, p := range res.Processes {
		stopped := p.Stopped
		if p.DryRun {
			stopped = "dry run"
		}
		for _, r := range p.Runners {
			fields := strings.Join(r.Fields, ",")
			if fields == "" {
				fields = "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", p.PID, r.Address, short(r.Old), short(r.New), fields, dash(stopped))
		}
		for _, n := range p.Notes {
			fmt.Fprintf(tw, "%d\tnote: %s\n", p.PID, n)
		}
		if p.Error != "" {
			fmt.Fprintf(tw, "%d\terror: %s\n", p.PID, p.Error)
		}
	}
	return tw.Flush()
}

func short(v patch.Values) string {
	s := v.MinInterval.String()
	if v.QPS != 0 {
		s += fmt.Sprintf(" (qps %g, burst %d)", v.QPS, v.Burst)
	}
	if v.RetryInterval != 0 {
		s += fmt.Sprintf(" (retry %v, max %v)", v.RetryInterval, v.MaxInterval)
	}
	return s
}
