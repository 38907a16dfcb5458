// Package netns opens sockets inside another network namespace.
//
// kube-proxy binds its metrics and health servers to addresses of its own network namespace:
// 127.0.0.1:10249 is the node's loopback when kube-proxy runs with hostNetwork, and a private
// loopback when it runs in a namespace of its own (as in the test bed). A socket belongs to the
// namespace of the thread that created it, for its whole life, so kptune creates the socket on a
// locked OS thread switched into the target namespace and switches back before the thread is
// released. Since Go 1.10 the runtime never clones new threads from a locked one, so the switch
// does not leak into other goroutines.
package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dialer dials TCP connections from inside the network namespace at Path (a /proc/PID/ns/net or
// /run/netns/NAME file). An empty Path dials from the caller's namespace.
type Dialer struct {
	Path string
}

// ForPID returns a Dialer for the network namespace of process pid.
func ForPID(pid int) Dialer { return Dialer{Path: fmt.Sprintf("/proc/%d/ns/net", pid)} }

// ForName returns a Dialer for a namespace created with `ip netns add NAME`.
func ForName(name string) Dialer { return Dialer{Path: "/run/netns/" + name} }

// DialContext connects to address, which must be an IP literal and port: name resolution inside
// another namespace would read this namespace's resolver configuration.
func (d Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if d.Path == "" || d.current() {
		var nd net.Dialer
		return nd.DialContext(ctx, network, address)
	}
	if _, err := netip.ParseAddrPort(address); err != nil {
		return nil, fmt.Errorf("dial %s in namespace %s: need an IP:port literal: %w", address, d.Path, err)
	}
	var conn net.Conn
	err := d.Do(func() error {
		var nd net.Dialer
		var err error
		conn, err = nd.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Do runs fn on an OS thread switched into the namespace. fn must not start goroutines that create
// sockets: they would run on other threads, in the caller's namespace.
func (d Dialer) Do(fn func() error) error {
	target, err := os.Open(d.Path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", d.Path, err)
			return
		}
		ferr := fn()
		// A thread that cannot return to its namespace stays locked, so the runtime ends it when
		// this goroutine exits instead of reusing it.
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// current reports whether the namespace is the caller's own (kube-proxy with hostNetwork, seen from
// the host): then no switch, and no CAP_SYS_ADMIN, is needed.
func (d Dialer) current() bool {
	var a, b unix.Stat_t
	if unix.Stat(d.Path, &a) != nil || unix.Stat("/proc/self/ns/net", &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}
