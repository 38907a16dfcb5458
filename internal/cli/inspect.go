package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kptune/internal/inspect"
)

type inspectFlags struct {
	pid    int
	output string
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
	return cmd
}

func runInspect(out io.Writer, f inspectFlags) error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("unknown output format %q: use table or json", f.output)
	}
	var r inspect.Report
	if f.pid != 0 {
		p, err := inspect.PID(f.pid)
		if err != nil {
			return err
		}
		r.Processes = []inspect.Process{p}
	} else {
		var err error
		if r, err = inspect.All(); err != nil {
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
	fmt.Fprintln(tw, "PID\tK8S\tGO\tMODE\tRUNNER\tMIN\tMAX\tRETRY\tQPS\tBURST\tPATCHABLE")
	for _, p := range r.Processes {
		if p.Error != "" {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t%s\n", p.PID, p.K8sVersion, p.GoVersion, dash(p.ProxyMode), p.Error)
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
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PID, p.K8sVersion, p.GoVersion, dash(p.ProxyMode),
				rn.Address, rn.MinInterval, rn.MaxInterval, dash(rn.RetryInterval), qps, burst, patch)
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
