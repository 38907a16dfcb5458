package netns

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDialReachesOnlyTheNamespace listens on 127.0.0.1 inside a fresh namespace and checks that the
// Dialer reaches it there while a plain dial from this namespace does not.
func TestDialReachesOnlyTheNamespace(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root (creating a network namespace); make test runs it")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creating a network namespace needs CAP_SYS_ADMIN")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2): run test/setup.sh")
	}
	name := "kptune-nstest"
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}

	d := ForName(name)
	var ln net.Listener
	if err := d.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatalf("listen in namespace: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("inside\n"))
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial in namespace: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if strings.TrimSpace(string(b)) != "inside" {
		t.Fatalf("read %q from the namespace's listener", b)
	}
	if c, err := (Dialer{}).DialContext(ctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("the listener of the namespace was reachable from the host namespace")
	}
	if _, err := d.DialContext(ctx, "tcp", "localhost:1"); err == nil || !strings.Contains(err.Error(), "IP:port literal") {
		t.Fatalf("dial by host name: got %v, want an IP:port literal error", err)
	}
}
