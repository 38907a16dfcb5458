package testbed

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// nftSendsTo reports whether chain of kube-proxy's ip table in the network namespace ns sends
// traffic to the endpoint ip:port, asking the kernel over netlink for that chain's rules and the
// maps they look up, and nothing else: `nft list chain` builds a cache of the whole ruleset first
// (every chain, set and map of 5000 Services), which costs a large part of a core a listing.
// Up to k8s 1.36 a service chain picks its endpoint's chain from a verdict map (vmap), the chain
// named after the address (…__IP/PORT); from 1.37 it picks the address and port from a dnat map.
func nftSendsTo(ns, chain string, ip netip.Addr, port uint16) (bool, error) {
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return false, fmt.Errorf("open network namespace: %w", err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		return false, fmt.Errorf("netlink to nftables in %s: %w", ns, err)
	}
	defer c.CloseLasting()
	table := &nftables.Table{Name: "kube-proxy", Family: nftables.TableFamilyIPv4}
	rules, err := c.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if err != nil {
		return false, fmt.Errorf("rules of chain %s in %s: %w", chain, ns, err)
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
					return false, fmt.Errorf("map %s of chain %s in %s: %w", e.SetName, chain, ns, err)
				}
				elems, err := c.GetSetElements(set)
				if err != nil {
					return false, fmt.Errorf("elements of map %s in %s: %w", e.SetName, ns, err)
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
