package testbed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"kptune/internal/netns"
)

// The node's parts and why these versions (see the test bed section of the README):
//   - kube-controller-manager and kube-scheduler are the API server's version (v1.37.2), as the
//     version skew policy wants;
//   - the kubelet is v1.34.4: the machines here have cgroup v1 only, which kubelet 1.35 and later
//     refuse unless told failCgroupV1: false, and 1.34 is within the three minor versions a kubelet
//     may trail the API server by;
//   - containerd 1.6.20 and runc 1.1.5 are Debian 12's (test/setup.sh --e2e): kubelet 1.34 runs pods
//     on them (it asks for the RuntimeConfig CRI call 1.6 lacks, logged once at start, harmless).
const (
	KubeletVersion     = "v1.34.4"
	ControllersVersion = "v1.37.2"
)

// Node is a kubelet with its containerd, in a network namespace of its own like a kube-proxy's:
// its hostNetwork pods share that namespace, and see this machine's PIDs when hostPID.
type Node struct {
	Name   string // the Node, registered by the kubelet
	NS     string
	IP     string
	Dir    string
	Socket string // containerd's CRI socket
	Cgroup string // the cgroup (in every v1 hierarchy) its pods run under

	c          *Cluster
	containerd *proc
	kubelet    *proc
}

// StartControllers starts kube-controller-manager (only the controllers a DaemonSet, a namespace's
// service accounts and a helm uninstall need) and kube-scheduler in the control plane's namespace,
// and publishes the API server as the endpoint of the `kubernetes` Service, so that pods' in-cluster
// clients reach it through kube-proxy's rules as they do in a cluster.
func (c *Cluster) StartControllers(ctx context.Context) error {
	var bins []string
	for _, cmd := range []string{"kube-controller-manager", "kube-scheduler"} {
		paths, err := runScript(ctx, "test/kubeproxy/build.sh", ControllersVersion, "--cmd", cmd)
		if err != nil {
			return err
		}
		bins = append(bins, paths[len(paths)-1])
	}
	kcm, err := c.start("kube-controller-manager", c.NS, filepath.Join(c.Dir, "kube-controller-manager.log"), nil, bins[0],
		"--kubeconfig="+c.AdminKubeconfig(),
		"--controllers=daemonset,serviceaccount,root-ca-cert-publisher,garbagecollector,namespace,podgc",
		"--root-ca-file="+c.pki.path("ca.crt"),
		"--leader-elect=false", "--secure-port=0", "--v=1")
	if err != nil {
		return err
	}
	sched, err := c.start("kube-scheduler", c.NS, filepath.Join(c.Dir, "kube-scheduler.log"), nil, bins[1],
		"--kubeconfig="+c.AdminKubeconfig(), "--leader-elect=false", "--secure-port=0", "--v=1")
	if err != nil {
		return err
	}
	// The kube-root-ca.crt ConfigMap is what pods' service account volumes take their CA from.
	if err := waitFor(ctx, 60*time.Second, kcm, "kube-controller-manager did not publish kube-root-ca.crt", func(ctx context.Context) bool {
		_, err := c.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil
	}); err != nil {
		return err
	}
	if sched.exited() {
		return sched.failed("kube-scheduler did not start")
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "kptune-testbed"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{APIAddress}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](6443), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("publish the API server's endpoint: %w", err)
	}
	return nil
}

// StartNode starts containerd and a kubelet for a new Node (single-stack IPv4), imports the pause
// image, and waits until the Node is Ready.
func (c *Cluster) StartNode(ctx context.Context) (*Node, error) {
	kubelet, err := runScript(ctx, "test/kubeproxy/build.sh", KubeletVersion, "--cmd", "kubelet")
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nsenter", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("no %s: run test/setup.sh --e2e (containerd, runc, the CNI plugins)", tool)
		}
	}
	pause, err := PauseImage(ctx)
	if err != nil {
		return nil, err
	}
	n, ns, ip4, _, err := c.nodeNetns(false)
	if err != nil {
		return nil, err
	}
	nd := &Node{Name: fmt.Sprintf("%s-node-%d", c.ID, n), NS: ns, IP: ip4, c: c,
		Dir: filepath.Join(c.Dir, fmt.Sprintf("node-%d", n)), Cgroup: c.ID}
	nd.Socket = filepath.Join(nd.Dir, "containerd.sock")
	for _, d := range []string{"cni", "kubelet", "pod-logs", "containerd"} {
		if err := os.MkdirAll(filepath.Join(nd.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	c.st.Cgroups = append(c.st.Cgroups, nd.Cgroup)
	c.st.Sockets = append(c.st.Sockets, nd.Socket)
	err = c.st.save()
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := makeCgroup(nd.Cgroup); err != nil {
		return nil, err
	}

	write := func(name, text string) error { return os.WriteFile(filepath.Join(nd.Dir, name), []byte(text), 0o600) }
	// Pods that are not hostNetwork get an address of 10.252.N.0/24 on a veth pair to the node's
	// namespace, which forwards and masquerades their traffic.
	if err := write("cni/10-testbed.conflist", fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "testbed", "plugins": [{"type": "ptp", "ipMasq": true,
  "ipam": {"type": "host-local", "subnet": "10.252.%d.0/24", "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}}]}
`, n, filepath.Join(nd.Dir, "cni-ipam"))); err != nil {
		return nil, err
	}
	if err := netns.ForName(ns).Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		return nil, fmt.Errorf("enable forwarding in %s: %w", ns, err)
	}
	// restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so runc cannot lower a container's
	// oom_score_adj and dies without it. Pods' network namespaces are mounted under containerd's
	// state directory, so that the test bed's cleanup finds them.
	if err := write("containerd.toml", fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
`, filepath.Join(nd.Dir, "containerd/root"), filepath.Join(nd.Dir, "containerd/state"), nd.Socket, nd.Socket+".ttrpc",
		filepath.Join(nd.Dir, "containerd/opt"), pause.Name, filepath.Join(nd.Dir, "cni"))); err != nil {
		return nil, err
	}
	nd.containerd, err = c.record(startHostSys("containerd "+nd.Name, ns, filepath.Join(nd.Dir, "containerd.log"), c.opts.Detach, nil,
		"containerd", "--config", filepath.Join(nd.Dir, "containerd.toml")))
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 30*time.Second, nd.containerd, "containerd did not start", func(ctx context.Context) bool {
		_, err := nd.Ctr(ctx, "version")
		return err == nil
	}); err != nil {
		return nil, err
	}
	if err := nd.Import(ctx, pause); err != nil {
		return nil, err
	}

	if _, _, err := c.pki.issue(nd.Name, "system:node:"+nd.Name, []string{"system:nodes"}, nil, false); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(nd.Dir, "kubelet.kubeconfig")
	if err := c.pki.kubeconfig(kubeconfig, "https://"+APIAddress+":6443", nd.Name); err != nil {
		return nil, err
	}
	// A container that keeps exiting is restarted after 1 s, not after up to 5 minutes, so that a
	// test can restart one twenty times (KubeletCrashLoopBackOffMax, alpha in 1.34).
	if err := write("kubelet.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[1]s
cgroupDriver: cgroupfs
cgroupRoot: /%[2]s
failCgroupV1: false
failSwapOn: false
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
podLogsDir: %[4]s
resolvConf: ""
evictionHard: {"memory.available": "1%%", "nodefs.available": "1%%", "imagefs.available": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
featureGates: {KubeletCrashLoopBackOffMax: true}
crashLoopBackOff: {maxContainerRestartPeriod: 1s}
`, nd.Socket, nd.Cgroup, nd.IP, filepath.Join(nd.Dir, "pod-logs"))); err != nil {
		return nil, err
	}
	nd.kubelet, err = c.record(startHostSys("kubelet "+nd.Name, ns, filepath.Join(nd.Dir, "kubelet.log"), c.opts.Detach, nil,
		kubelet[len(kubelet)-1], "--config="+filepath.Join(nd.Dir, "kubelet.yaml"), "--kubeconfig="+kubeconfig,
		"--hostname-override="+nd.Name, "--node-ip="+nd.IP, "--root-dir="+filepath.Join(nd.Dir, "kubelet"),
		"--cert-dir="+filepath.Join(nd.Dir, "kubelet-pki"), "--v=1"))
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 120*time.Second, nd.kubelet, "the kubelet's Node did not become Ready", func(ctx context.Context) bool {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, nd.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue
			}
		}
		return false
	}); err != nil {
		return nil, err
	}
	return nd, nil
}

// Ctr runs ctr against the node's containerd, in its k8s.io namespace.
func (nd *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", nd.Socket, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, tailOf(out, 3))
	}
	return string(out), nil
}

// Import loads an image archive into the node's containerd, where the kubelet finds it by name.
func (nd *Node) Import(ctx context.Context, img Image) error {
	_, err := nd.Ctr(ctx, "images", "import", "--no-unpack", img.Archive)
	if err != nil {
		return err
	}
	out, err := nd.Ctr(ctx, "images", "list", "--quiet")
	if err != nil {
		return err
	}
	want := img.Name
	if !strings.Contains(want, "/") {
		want = "docker.io/library/" + want
	}
	if !slices.Contains(strings.Fields(out), want) {
		return fmt.Errorf("imported %s, but containerd lists no image %s: %s", img.Archive, want, strings.Join(strings.Fields(out), " "))
	}
	return nil
}

// Dialer opens sockets in the node's network namespace, where its hostNetwork pods listen.
func (nd *Node) Dialer() netns.Dialer { return netns.ForName(nd.NS) }

// CgroupPath is the node's cgroup in one v1 hierarchy (cpuacct, memory, ...): its pods' cgroups
// are below it.
func (nd *Node) CgroupPath(hierarchy string) string {
	return filepath.Join("/sys/fs/cgroup", hierarchy, nd.Cgroup)
}

// Helm runs the helm binary test/helm/build.sh builds in the control plane's namespace with the
// admin kubeconfig, its caches in the test bed's directory.
func (c *Cluster) Helm(ctx context.Context, args ...string) (string, error) {
	paths, err := runScript(ctx, "test/helm/build.sh")
	if err != nil {
		return "", err
	}
	home := filepath.Join(c.Dir, "helm")
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.NS, paths[len(paths)-1], "--kubeconfig", c.AdminKubeconfig()}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, tailOf(out, 5))
	}
	return string(out), nil
}

// cgroupHierarchies lists the cgroup v1 hierarchies mounted under /sys/fs/cgroup.
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var hs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup" && strings.HasPrefix(fields[1], "/sys/fs/cgroup/") {
			hs = append(hs, fields[1])
		}
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no cgroup v1 hierarchy under /sys/fs/cgroup: the test bed's node runs on cgroup v1 (see the README)")
	}
	return hs, sc.Err()
}

// makeCgroup creates the node's cgroup in every hierarchy: the kubelet's cgroupRoot must exist. A new
// cpuset cgroup starts with no CPU and no memory node, so it gets its parent's.
func makeCgroup(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("set %s of cgroup %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// removeCgroup kills every process left in the node's cgroup (its pods' containers) and removes it
// and the cgroups under it, deepest first.
func removeCgroup(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var dirs []string
	for _, h := range hs {
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					left++
				}
			}
		}
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killShims kills the containerd shims serving a containerd socket: they outlive containerd, by
// design, and hold their containers.
func killShims(socket string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.Contains(args[0], "containerd-shim") && slices.Contains(args, socket) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount at or below dir (the kubelet's volumes, containerd's root
// filesystems), deepest first.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMount(f[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
