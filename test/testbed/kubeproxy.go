package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kptune/internal/kpmetrics"
	"kptune/internal/netns"
)

// Proxy modes.
const (
	IPTables = "iptables"
	NFTables = "nftables"
	IPVS     = "ipvs"
)

// MetricsAddress is kube-proxy's default metrics address, inside its namespace.
const MetricsAddress = "127.0.0.1:10249"

// KubeProxyOptions configure one kube-proxy.
type KubeProxyOptions struct {
	Build Build
	// Binary overrides the build with a binary already at hand.
	Binary string
	// Mode is iptables (default), nftables or ipvs.
	Mode string
	// MinSyncPeriod and SyncPeriod are passed as --iptables-* (--ipvs-* in ipvs mode) when non-zero.
	MinSyncPeriod, SyncPeriod time.Duration
	// DualStack gives the node IPv4 and IPv6 addresses, so kube-proxy runs a proxier a family.
	// Otherwise IPv6 is disabled in the namespace and, in iptables and ipvs mode, kube-proxy finds no
	// ip6tables on its PATH and runs IPv4 only. In nftables mode (one nft binary for both families)
	// some versions still run dual-stack (1.34 does, 1.37 does not): Proxiers tells.
	DualStack bool
	// Args are appended to kube-proxy's command line.
	Args []string
	// IPTablesLegacy gives kube-proxy the legacy (x_tables) iptables instead of the system's default
	// (Debian's is the nf_tables backend, whose iptables-restore of thousands of Services takes
	// minutes on a small machine).
	IPTablesLegacy bool
	// CountExecs puts wrappers for iptables*, ip6tables* and nft first on kube-proxy's PATH, each
	// logging its name before it runs the real program: Execs counts them.
	CountExecs bool
}

// KubeProxy is a running kube-proxy in a namespace of its own.
type KubeProxy struct {
	Node    string // its Node's name (--hostname-override)
	NS      string // its network namespace
	IP      string // its node IPv4 address
	Binary  string
	Options KubeProxyOptions
	Metrics *kpmetrics.Client

	proc     *proc
	c        *Cluster
	probeCPU time.Duration // the CPU time HasEndpoint's reads of the rules and Reach's connections took
	dp       datapath
	env      []string
	args     []string
}

var minorRE = regexp.MustCompile(`^v?1\.(\d+)\.`)

// Minor returns the k8s minor version of a "v1.MINOR.PATCH" string, or 0.
func Minor(version string) int {
	m := minorRE.FindStringSubmatch(version)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// StartKubeProxy creates a namespace and a Node for a new kube-proxy and starts it; it does not wait
// for its first sync (see WaitSynced).
func (c *Cluster) StartKubeProxy(ctx context.Context, o KubeProxyOptions) (*KubeProxy, error) {
	if o.Mode == "" {
		o.Mode = IPTables
	}
	bin := o.Binary
	if bin == "" {
		var err error
		if bin, err = o.Build.KubeProxy(ctx); err != nil {
			return nil, err
		}
	}
	n, ns, ip4, ip6, err := c.nodeNetns(o.DualStack)
	if err != nil {
		return nil, err
	}
	kp := &KubeProxy{
		// Named after the test bed, so that test beds running side by side (and agents told their
		// node) never mistake one another's kube-proxies.
		Node:    fmt.Sprintf("%s-node-%d", c.ID, n),
		NS:      ns,
		IP:      ip4,
		Binary:  bin,
		Options: o,
		c:       c,
	}

	// kube-proxy waits for its Node and leaves when the Node's addresses change later: create the Node
	// with its addresses before kube-proxy starts.
	addrs := []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: kp.IP}, {Type: corev1.NodeHostName, Address: kp.Node}}
	if o.DualStack {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip6})
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: kp.Node, Labels: map[string]string{"kubernetes.io/hostname": kp.Node}}}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = c.Client.CoreV1().Nodes().Get(ctx, kp.Node, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("create Node %s: %w", kp.Node, err)
	}
	created.Status.Addresses = addrs
	created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("set the addresses of Node %s: %w", kp.Node, err)
	}

	kubeconfig := filepath.Join(c.Dir, kp.Node+".kubeconfig")
	if err := c.pki.kubeconfig(kubeconfig, "https://"+APIAddress+":6443", "kube-proxy"); err != nil {
		return nil, err
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + kp.Node,
		"--proxy-mode=" + o.Mode,
		"--metrics-bind-address=" + MetricsAddress,
		// Conntrack limits are not namespaced: leave the host's alone.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--v=2",
	}
	prefix := "--iptables-"
	if o.Mode == IPVS {
		prefix = "--ipvs-"
	}
	if o.MinSyncPeriod != 0 {
		args = append(args, prefix+"min-sync-period="+o.MinSyncPeriod.String())
	}
	if o.SyncPeriod != 0 {
		args = append(args, prefix+"sync-period="+o.SyncPeriod.String())
	}
	if minor := Minor(o.Build.Version); o.Mode == NFTables && minor >= 29 && minor <= 30 {
		args = append(args, "--feature-gates=NFTablesProxyMode=true")
	}
	args = append(args, o.Args...)
	var env []string
	path := os.Getenv("PATH")
	if !o.DualStack && o.Mode != NFTables {
		dir, err := c.ipv4OnlyPath()
		if err != nil {
			return nil, err
		}
		path = dir + ":/usr/local/bin:/usr/bin:/bin"
		env = []string{"PATH=" + path}
	}
	if o.IPTablesLegacy || o.CountExecs {
		dir, err := kp.tools()
		if err != nil {
			return nil, err
		}
		env = []string{"PATH=" + dir + ":" + path}
	}
	kp.env, kp.args = env, args
	if err := kp.run(); err != nil {
		return nil, err
	}
	kp.Metrics = kpmetrics.NewClient(netns.ForName(kp.NS), MetricsAddress)
	c.mu.Lock()
	c.kps = append(c.kps, kp)
	c.mu.Unlock()
	return kp, nil
}

func (kp *KubeProxy) run() (err error) {
	kp.proc, err = kp.c.start("kube-proxy "+kp.Node, kp.NS, filepath.Join(kp.c.Dir, kp.Node+".log"), kp.env, kp.Binary, kp.args...)
	return err
}

// Restart kills kube-proxy (SIGKILL, as a crash would) and starts it again for the same Node, in the
// same namespace, with the same flags: a new process that rebuilds its proxiers.
func (kp *KubeProxy) Restart() error {
	_ = syscall.Kill(kp.PID(), syscall.SIGKILL)
	kp.proc.stop()
	return kp.run()
}

// RestartWith restarts kube-proxy as Restart does, with a new minimum sync period: how a period is
// changed without kptune.
func (kp *KubeProxy) RestartWith(minSyncPeriod time.Duration) error {
	prefix := "--iptables-min-sync-period="
	if kp.Options.Mode == IPVS {
		prefix = "--ipvs-min-sync-period="
	}
	args := slices.DeleteFunc(slices.Clone(kp.args), func(a string) bool { return strings.HasPrefix(a, prefix) })
	kp.args = append(args, prefix+minSyncPeriod.String())
	kp.Options.MinSyncPeriod = minSyncPeriod
	return kp.Restart()
}

// PID is the kube-proxy process's id (`ip netns exec` replaces itself with kube-proxy).
func (kp *KubeProxy) PID() int { return kp.proc.pid() }

// Log is the path of kube-proxy's log.
func (kp *KubeProxy) Log() string { return kp.proc.log }

// Running reports whether kube-proxy has not exited.
func (kp *KubeProxy) Running() bool { return !kp.proc.exited() }

// WaitSynced waits until kube-proxy serves metrics and has completed at least minSyncs syncs.
func (kp *KubeProxy) WaitSynced(ctx context.Context, minSyncs uint64, timeout time.Duration) error {
	return kp.WaitMetrics(ctx, timeout, 250*time.Millisecond, fmt.Sprintf("kube-proxy %s did not sync %d times", kp.Node, minSyncs), func(s kpmetrics.Snapshot) bool {
		return s.Syncs() >= minSyncs
	})
}

// WaitMetrics scrapes kube-proxy's metrics every interval until done accepts a scrape, kube-proxy
// exits, or timeout passes; what says what did not happen.
func (kp *KubeProxy) WaitMetrics(ctx context.Context, timeout, every time.Duration, what string, done func(kpmetrics.Snapshot) bool) error {
	return waitEvery(ctx, timeout, every, kp.proc, what, func(ctx context.Context) bool {
		s, err := kp.Metrics.Scrape(ctx)
		return err == nil && done(s)
	})
}

// Rules returns the rules kube-proxy has written in its namespace: iptables-save (and ip6tables-save
// when dual-stack) output, or the nftables ruleset.
func (kp *KubeProxy) Rules() (string, error) {
	if kp.Options.Mode == NFTables {
		out, err := inNetns(kp.NS, "nft", "list", "ruleset")
		return string(out), err
	}
	save := "-save"
	if kp.Options.IPTablesLegacy {
		save = "-legacy-save"
	}
	out, err := inNetns(kp.NS, "iptables"+save)
	if err != nil || !kp.Options.DualStack {
		return string(out), err
	}
	out6, err := inNetns(kp.NS, "ip6tables"+save)
	return string(out) + string(out6), err
}

// HasEndpoint reports whether kube-proxy's rules send Service i to the endpoint ip (port 8080)
// without listing the whole ruleset, which at thousands of Services costs a large part of a core a
// listing (30 s of nft at 5000 Services) and, with iptables, holds the lock kube-proxy's
// iptables-restore waits for. It reads only the Service's chain, named as kube-proxy names it
// (serviceChain), from the kernel: nftSendsTo, and xtJumps for legacy iptables (iptables-nft's
// chain is listed with iptables). An nftables service chain names its endpoints' addresses; an
// iptables one jumps to KUBE-SEP chains named by a hash of the Service port, protocol and endpoint,
// as kube-proxy's servicePortEndpointChainName computes it (iptables rules carry no comment naming
// the endpoint past 1000 endpoints). A Service whose chain is not there yet has no endpoint.
func (kp *KubeProxy) HasEndpoint(i int, ip string) (bool, error) {
	port := LoadNamespace + "/" + ServiceName(i)
	chain := kp.serviceChain(i)
	if kp.Options.Mode == NFTables {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return false, err
		}
		there, cpu, err := nftSendsTo(kp.NS, chain, addr, 8080)
		kp.probeCPU += cpu
		return there, err
	}
	hash := sha256.Sum256([]byte(port + ":http" + "tcp" + ip + ":8080"))
	sep := "KUBE-SEP-" + base32.StdEncoding.EncodeToString(hash[:])[:16]
	if kp.Options.IPTablesLegacy {
		// Read from the kernel, not listed with iptables (see xtJumps).
		there, cpu, err := xtJumps(kp.NS, "nat", chain, sep)
		kp.probeCPU += cpu
		return there, err
	}
	t0 := childrenCPU()
	out, err := inNetns(kp.NS, "iptables", "-w", "-t", "nat", "-S", chain)
	kp.probeCPU += childrenCPU() - t0
	if err != nil && strings.Contains(err.Error(), "No chain/target/match by that name") {
		return false, nil
	}
	return strings.Contains(string(out), "-j "+sep), err
}

// serviceChain is the name of the chain kube-proxy gives Service i's port (http, TCP), computed as
// kube-proxy v1.33 and v1.37 compute it: nftables' servicePortChainNameBase with its "service-"
// prefix, iptables' servicePortChainName.
func (kp *KubeProxy) serviceChain(i int) string {
	if kp.Options.Mode == NFTables {
		name := LoadNamespace + "/" + ServiceName(i) + "/tcp/http"
		hash := sha256.Sum256([]byte(name))
		return "service-" + base32.StdEncoding.EncodeToString(hash[:])[:8] + "-" + name
	}
	hash := sha256.Sum256([]byte(LoadNamespace + "/" + ServiceName(i) + ":http" + "tcp"))
	return "KUBE-SVC-" + base32.StdEncoding.EncodeToString(hash[:])[:16]
}

// ProbeCPU is the CPU time HasEndpoint's reads of kube-proxy's rules and Reach's connections have
// taken, in kptune's test process or in the programs it ran: what probing took from the machine
// kube-proxy runs on.
func (kp *KubeProxy) ProbeCPU() time.Duration { return kp.probeCPU }

// childrenCPU is the CPU time of this process's finished children.
func childrenCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Proxiers is how many proxiers (so sync runners) kube-proxy built, from what it logged: 2 when it
// runs dual-stack, 1 when single-stack.
func (kp *KubeProxy) Proxiers() (int, error) {
	b, err := os.ReadFile(kp.proc.log)
	if err != nil {
		return 0, err
	}
	switch {
	case strings.Contains(string(b), "kube-proxy running in dual-stack mode"):
		return 2, nil
	case strings.Contains(string(b), "kube-proxy running in single-stack mode"):
		return 1, nil
	}
	return 0, fmt.Errorf("kube-proxy %s has not logged whether it runs single- or dual-stack", kp.Node)
}

// Stop stops kube-proxy (SIGTERM, then SIGKILL); its namespace stays until the cluster is torn down.
func (kp *KubeProxy) Stop() {
	kp.proc.stop()
	kp.closeDatapath()
}

// tools writes kube-proxy's own directory of rule programs (see IPTablesLegacy and CountExecs).
func (kp *KubeProxy) tools() (string, error) {
	dir := filepath.Join(kp.c.Dir, kp.Node+"-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	names := []string{"iptables", "iptables-save", "iptables-restore", "nft"}
	if kp.Options.DualStack || kp.Options.Mode == NFTables {
		names = append(names, "ip6tables", "ip6tables-save", "ip6tables-restore")
	}
	for _, name := range names {
		target, err := exec.LookPath(name)
		if err != nil {
			continue // not installed: kube-proxy will not find it either
		}
		if kp.Options.IPTablesLegacy && name != "nft" {
			family, verb, _ := strings.Cut(name, "-")
			legacy := family + "-legacy"
			if verb != "" {
				legacy += "-" + verb
			}
			if target, err = exec.LookPath(legacy); err != nil {
				return "", fmt.Errorf("IPTablesLegacy: %s is not installed (Debian's iptables package has it)", legacy)
			}
		}
		file := filepath.Join(dir, name)
		if !kp.Options.CountExecs {
			if err := os.Symlink(target, file); err != nil && !os.IsExist(err) {
				return "", err
			}
			continue
		}
		script := fmt.Sprintf("#!/bin/sh\necho %s >>%s\nexec %s \"$@\"\n", name, kp.execLog(), target)
		if err := os.WriteFile(file, []byte(script), 0o755); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func (kp *KubeProxy) execLog() string { return filepath.Join(kp.c.Dir, kp.Node+"-execs.log") }

// Execs counts the rule programs kube-proxy has run, by name (with CountExecs).
func (kp *KubeProxy) Execs() (map[string]int, error) {
	if !kp.Options.CountExecs {
		return nil, fmt.Errorf("kube-proxy %s was not started with CountExecs", kp.Node)
	}
	b, err := os.ReadFile(kp.execLog())
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]int{}, nil
	}
	if err != nil {
		return nil, err
	}
	n := map[string]int{}
	for _, line := range strings.Fields(string(b)) {
		n[line]++
	}
	return n, nil
}

// ipv4OnlyPath returns a directory holding links to every system binary but ip6tables*: a node
// without IPv6 netfilter tools, on which kube-proxy runs single-stack.
func (c *Cluster) ipv4OnlyPath() (string, error) {
	dir := filepath.Join(c.Dir, "sbin-ipv4")
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, sys := range []string{"/usr/sbin", "/sbin"} {
		ents, err := os.ReadDir(sys)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "ip6tables") {
				continue
			}
			if err := os.Symlink(filepath.Join(sys, e.Name()), filepath.Join(dir, e.Name())); err != nil && !os.IsExist(err) {
				return "", err
			}
		}
	}
	return dir, nil
}

// nodeNetns creates the network namespace of a new node (a kube-proxy's, or a kubelet's) joined to
// the control plane's by a veth pair, and returns its number, name and addresses (10.251.N.2 and,
// dual-stack, fd00:251:N::2). Single-stack, IPv6 is disabled in it.
func (c *Cluster) nodeNetns(dualStack bool) (n int, ns, ip4, ip6 string, err error) {
	c.mu.Lock()
	n = c.nodes
	c.nodes++
	c.mu.Unlock()
	if n > 250 {
		return 0, "", "", "", fmt.Errorf("a test bed holds at most 250 nodes")
	}
	ns = fmt.Sprintf("%s-kp%d", c.ID, n)
	ip4 = fmt.Sprintf("10.251.%d.2", n)
	ip6 = fmt.Sprintf("fd00:251:%x::2", n)
	if err := c.addNetns(ns); err != nil {
		return 0, "", "", "", err
	}
	if !dualStack {
		err := netns.ForName(ns).Do(func() error {
			for _, f := range []string{"all", "default", "lo"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f+"/disable_ipv6", []byte("1"), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, "", "", "", fmt.Errorf("disable IPv6 in %s: %w", ns, err)
		}
	}
	veth := fmt.Sprintf("kp%d", n)
	steps := [][]string{
		{"-n", c.NS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", c.NS, "addr", "add", fmt.Sprintf("10.251.%d.1/24", n), "dev", veth},
		{"-n", c.NS, "link", "set", veth, "up"},
		{"-n", ns, "addr", "add", ip4 + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.251.%d.1", n)},
	}
	if dualStack {
		steps = append(steps,
			[]string{"-n", c.NS, "-6", "addr", "add", fmt.Sprintf("fd00:251:%x::1/64", n), "dev", veth, "nodad"},
			[]string{"-n", ns, "-6", "addr", "add", ip6 + "/64", "dev", "eth0", "nodad"},
			[]string{"-n", ns, "-6", "route", "add", "default", "via", fmt.Sprintf("fd00:251:%x::1", n)})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return 0, "", "", "", err
		}
	}
	return n, ns, ip4, ip6, nil
}
