// Command kptune retunes a running kube-proxy's minimum sync period in place.
package main

import (
	"fmt"
	"os"

	"kptune/internal/cli"
)

func main() {
	if err := cli.NewCommand(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kptune:", err)
		os.Exit(1)
	}
}
