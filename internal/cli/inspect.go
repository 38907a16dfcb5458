package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"kptune/internal/inspect"
	"kptune/internal/probe"
	"kptune/internal/target"
)

type inspectFlags struct {
	pid    int
	output string
	locate locateFlags
}

// locateFlags choose how runners are found; inspect, set and reset share them.
type locateFlags struct {
	locator string
	timeout time.Duration
}

func (f *locateFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.locator, "locate", string(target.ByAuto),
		"how to find the runners: scan (memory scan), uprobe (capture them as kube-proxy syncs), both (must agree), auto (scan, else uprobe)")
	cmd.Flags().DurationVar(&f.timeout, "probe-timeout", probe.DefaultOptions.Timeout, "how long the uprobe waits for kube-proxy to sync")
}

func (f locateFlags) options() (target.LocateOptions, error) {
	l, err := target.ParseLocator(f.locator)
	if err != nil {
		return target.LocateOptions{}, err
	}
	if f.timeout <= 0 {
		return target.LocateOptions{}, fmt.Errorf("--probe-timeout %v: must be positive", f.timeout)
	}
	o := target.DefaultLocate
	o.Locator, o.Probe.Timeout = l, f.timeout
	return o, nil
}

func newInspectCommand() *cobra.Command {
	var f inspectFlags
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show every kube-proxy on this node and the values its sync runners live by",
		Long: "inspect finds kube-proxy processes (by their build information, so renamed binaries are found),\n" +
			"reads how each was built, and scans its memory for its sync runners. It writes nothing and stops nothing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runInspect(cmd.OutOrStdout(), f) },
	}
	cmd.Flags().IntVar(&f.pid, "pid", 0, "inspect only this process")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	f.locate.register(cmd)
	return cmd
}

func runInspect(out io.Writer, f inspectFlags) error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("unknown output format %q: use table or json", f.output)
	}
	lo, err := f.locate.options()
	if err != nil {
		return err
	}
	ctx := context.Background()
	var r inspect.Report
	if f.pid != 0 {
		p, err := inspect.PID(ctx, f.pid, lo)
		if err != nil {
			return err
		}
		r.Processes = []inspect.Process{p}
	} else {
		var err error
		if r, err = inspect.All(ctx, lo); err != nil {
			return err
		}
		if r.Processes == nil {
			r.Processes = []inspect.Process{}
		}
	}
	if f.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	if len(r.Processes) == 0 {
		_, err := fmt.Fprintln(out, "no kube-proxy process on this node (run as root to see every process)")
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tK8S\tGO\tMODE\tRUNNER\tMIN\tMAX\tRETRY\tQPS\tBURST\tFOUND BY\tPATCHABLE")
	for _, p := range r.Processes {
		if p.Error != "" {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t%s\n", p.PID, p.K8sVersion, p.GoVersion, dash(p.ProxyMode), p.Error)
			continue
		}
		for _, rn := range p.Runners {
			qps, burst := "-", "-"
			if rn.QPS != nil {
				qps, burst = fmt.Sprintf("%g", *rn.QPS), fmt.Sprint(*rn.Burst)
			}
			patch := "yes"
			if !rn.Patchable {
				patch = "no: " + rn.Reason
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PID, p.K8sVersion, p.GoVersion, dash(p.ProxyMode),
				rn.Address, rn.MinInterval, rn.MaxInterval, dash(rn.RetryInterval), qps, burst, p.Locator, patch)
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
