// Command kube-proxy is a fake: it declares a sync runner and a "sync-runner" string where the scan
// finds them, and can map a huge private region. Build tags choose what it pretends:
//
//	clientgo    link k8s.io/client-go (a stub), as every real kube-proxy does
//	hugerunner  a runner type of 2^49 bytes
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/kubernetes/pkg/proxy/runner"
)

func main() {
	size := flag.Int64("map", 0, "map this many bytes of private writable memory (MAP_NORESERVE), one page touched a GiB")
	flag.Parse()
	if *size > 0 {
		m, err := syscall.Mmap(-1, 0, int(*size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for i := 0; i < len(m); i += 1 << 30 {
			m[i] = 1
		}
	}
	r := runner.Keep()
	fmt.Println("ready", runner.Name, r != nil, clientGo)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
