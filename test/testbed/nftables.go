package testbed

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"kptune/internal/netns"
)

// nftSendsTo reports whether chain of kube-proxy's ip table in the network namespace ns sends
// traffic to the endpoint ip:port, and the CPU time it took to find out. It asks the kernel over
// netlink for that chain's rules and the maps they look up, and nothing else: `nft list chain`
// builds a cache of the whole ruleset first (every chain, set and map of 5000 Services), which
// costs a large part of a core a listing.
// Up to k8s 1.36 a service chain picks its endpoint's chain from a verdict map (vmap), the chain
// named after the address (…__IP/PORT); from 1.37 it picks the address and port from a dnat map.
func nftSendsTo(ns, chain string, ip netip.Addr, port uint16) (sends bool, cpu time.Duration, err error) {
	// The netlink socket is made, and every request sent and answered, on this thread, switched into
	// the namespace: the kernel builds its answers in the reading thread, so the thread's CPU time
	// is what the reads cost.
	err = netns.ForName(ns).Do(func() error {
		t0 := threadCPU()
		defer func() { cpu = threadCPU() - t0 }()
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("netlink to nftables in %s: %w", ns, err)
		}
		defer c.CloseLasting()
		sends, err = chainSendsTo(c, chain, ip, port)
		if err != nil {
			return fmt.Errorf("%w (in %s)", err, ns)
		}
		return nil
	})
	return sends, cpu, err
}

func chainSendsTo(c *nftables.Conn, chain string, ip netip.Addr, port uint16) (bool, error) {
	table := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
	rules, err := c.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if errors.Is(err, unix.ENOENT) {
		return false, nil // no such chain (or table) yet
	}
	if err != nil {
		return false, fmt.Errorf("rules of chain %s: %w", chain, err)
	}
	suffix := fmt.Sprintf("__%s/%d", ip, port)
	value := binary.BigEndian.AppendUint16(ip.AsSlice(), port)
	for _, r := range rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Verdict:
				if strings.HasSuffix(e.Chain, suffix) {
					return true, nil
				}
			case *expr.Lookup:
				if !e.IsDestRegSet {
					continue
				}
				set, err := c.GetSetByName(table, e.SetName)
				if err != nil {
					return false, fmt.Errorf("map %s of chain %s: %w", e.SetName, chain, err)
				}
				elems, err := c.GetSetElements(set)
				if err != nil {
					return false, fmt.Errorf("elements of map %s: %w", e.SetName, err)
				}
				// A verdict element comes back undecoded in Val (google/nftables v0.3.0 fills
				// VerdictData only when writing): its netlink attributes, the chain's name among them
				// as a NUL-terminated string.
				for _, el := range elems {
					if el.VerdictData != nil && strings.HasSuffix(el.VerdictData.Chain, suffix) ||
						bytes.Contains(el.Val, []byte(suffix+"\x00")) || bytes.HasPrefix(el.Val, value) {
						return true, nil
					}
				}
			}
		}
	}
	return false, nil
}
