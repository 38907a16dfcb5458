// Package cli wires kptune's commands: one small function a command, the flags in a struct, the work
// delegated to the internal packages.
package cli

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"kptune/internal/version"
)

// NewCommand returns kptune's root command writing to out and errOut.
func NewCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "kptune",
		Short: "Retune a running kube-proxy's sync rate limit in place, without a restart",
		Long: "kptune finds every kube-proxy on this node, reads the sync runner each proxier lives by, and\n" +
			"changes its minimum sync period in place, as if kube-proxy had been restarted with the new flag.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.AddCommand(newVersionCommand(), newInspectCommand(), newSetCommand(), newResetCommand(), newAgentCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kptune's version and the Go version that built it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "kptune %s (%s, %s/%s)\n",
				version.Version(), version.GoVersion(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
