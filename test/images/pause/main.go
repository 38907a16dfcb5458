// Command pause is the test bed's pod sandbox image (containerd's sandbox_image): it holds a pod's
// namespaces and waits for SIGTERM or SIGINT, as registry.k8s.io/pause does, which no registry
// reachable from the test machines serves.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
