package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kptune/internal/netns"
)

// APIAddress is where every kube-proxy namespace reaches the API server.
const APIAddress = "10.250.0.1"

// ClusterOptions configure Up.
type ClusterOptions struct {
	// Dir holds certificates, kubeconfigs, data and logs; default a new directory under the system
	// temporary directory, removed by Down.
	Dir string
	// Detach leaves the processes running when this process exits (test/cluster/up.sh); otherwise
	// they die with it.
	Detach bool
	// Progress receives one line a step; nil discards it.
	Progress io.Writer
}

// Cluster is a running control plane.
type Cluster struct {
	ID     string
	Dir    string
	NS     string // the control plane's network namespace
	Client kubernetes.Interface
	Config *rest.Config

	opts  ClusterOptions
	pki   *pki
	etcd  *proc
	api   *proc
	mu    sync.Mutex
	st    state
	nodes int
	kps   []*KubeProxy
}

// Up builds (if needed) and starts etcd and kube-apiserver in a new network namespace, and waits until
// the API server is ready. On failure it tears down what it started.
func Up(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the test bed needs root (network namespaces, iptables): run as root")
	}
	say := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", a...)
		}
	}
	say("building etcd and kube-apiserver (cached after the first time)")
	etcdBin, apiBin, err := ControlPlane(ctx)
	if err != nil {
		return nil, err
	}

	var idb [3]byte
	_, _ = rand.Read(idb[:])
	id := "kpt" + hex.EncodeToString(idb[:])
	c := &Cluster{ID: id, NS: id + "-cp", opts: opts}
	c.Dir = opts.Dir
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", id+"-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	c.st = state{ID: id, Dir: c.Dir, KeepDir: opts.Dir != ""}
	if err := c.st.save(); err != nil {
		return nil, fmt.Errorf("record test bed state in %s: %w", stateDir, err)
	}
	defer func() {
		if err != nil {
			_ = c.Down()
		}
	}()

	say("creating network namespace %s", c.NS)
	if err := c.addNetns(c.NS); err != nil {
		return nil, err
	}
	// The API server's address for the kube-proxy namespaces lives on the control plane's loopback:
	// routed to over each veth pair, local once there.
	if err := ip("-n", c.NS, "addr", "add", APIAddress+"/32", "dev", "lo"); err != nil {
		return nil, err
	}
	if err := ip("-n", c.NS, "-6", "addr", "add", "fd00:250::1/128", "dev", "lo"); err != nil {
		return nil, err
	}

	if c.pki, err = newPKI(c.Dir); err != nil {
		return nil, fmt.Errorf("create certificates: %w", err)
	}
	if _, _, err := c.pki.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(APIAddress), net.ParseIP("fd00:250::1"), net.ParseIP("10.96.0.1")}, true); err != nil {
		return nil, err
	}
	adminCert, adminKey, err := c.pki.issue("admin", "kptune-admin", []string{"system:masters"}, nil, false)
	if err != nil {
		return nil, err
	}
	if _, _, err := c.pki.issue("kube-proxy", "system:kube-proxy", nil, nil, false); err != nil {
		return nil, err
	}
	if err := c.pki.serviceAccountKey(); err != nil {
		return nil, err
	}
	if err := c.pki.kubeconfig(filepath.Join(c.Dir, "admin.kubeconfig"), "https://127.0.0.1:6443", "admin"); err != nil {
		return nil, err
	}

	say("starting etcd")
	c.etcd, err = c.start("etcd", c.NS, filepath.Join(c.Dir, "etcd.log"), nil, etcdBin,
		"--name=testbed", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=testbed=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return nil, err
	}
	etcdNS := netns.ForName(c.NS)
	if err := waitFor(ctx, 30*time.Second, c.etcd, "etcd did not become healthy", func(ctx context.Context) bool {
		conn, err := etcdNS.DialContext(ctx, "tcp", "127.0.0.1:2379")
		if err == nil {
			conn.Close()
		}
		return err == nil
	}); err != nil {
		return nil, err
	}

	say("starting kube-apiserver")
	p := c.pki.path
	c.api, err = c.start("kube-apiserver", c.NS, filepath.Join(c.Dir, "kube-apiserver.log"), nil, apiBin,
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port=6443",
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--client-ca-file="+p("ca.crt"),
		"--service-account-key-file="+p("sa.key"), "--service-account-signing-key-file="+p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.96.0.0/16,fd00:96::/108",
		"--authorization-mode=Node,RBAC", "--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
		"--allow-privileged=true", "--profiling=false", "--v=0")
	if err != nil {
		return nil, err
	}

	c.Config = &rest.Config{
		Host:            "https://127.0.0.1:6443",
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM(), CertData: adminCert, KeyData: adminKey},
		Dial:            netns.ForName(c.NS).DialContext,
		QPS:             1000,
		Burst:           2000,
		Timeout:         30 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return nil, err
	}
	c.Client = cs
	if err := waitFor(ctx, 120*time.Second, c.api, "kube-apiserver did not become ready", func(ctx context.Context) bool {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && strings.TrimSpace(string(body)) == "ok"
	}); err != nil {
		return nil, err
	}
	say("control plane ready in namespace %s (admin kubeconfig %s)", c.NS, filepath.Join(c.Dir, "admin.kubeconfig"))
	return c, nil
}

// Down stops every kube-proxy and the control plane, deletes the namespaces and, unless the caller
// chose the directory, the files.
func (c *Cluster) Down() error {
	c.mu.Lock()
	kps := c.kps
	c.kps = nil
	c.mu.Unlock()
	for _, kp := range kps {
		kp.Stop()
	}
	c.api.stop()
	c.etcd.stop()
	return c.st.cleanup()
}

// start starts a process and records it for cleanup.
func (c *Cluster) start(name, ns, log string, env []string, bin string, args ...string) (*proc, error) {
	return c.record(start(name, ns, log, c.opts.Detach, env, bin, args...))
}

func (c *Cluster) record(p *proc, err error) (*proc, error) {
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.PIDs = append(c.st.PIDs, p.pid())
	return p, c.st.save()
}

func (c *Cluster) addNetns(name string) error {
	c.mu.Lock()
	c.st.Namespaces = append(c.st.Namespaces, name)
	err := c.st.save()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	_ = delNetns(name)
	return addNetns(name)
}

// AdminKubeconfig is a kubeconfig with full rights, for programs run in the control plane's
// namespace (it points at the API server on that namespace's loopback).
func (c *Cluster) AdminKubeconfig() string { return filepath.Join(c.Dir, "admin.kubeconfig") }

// Process is a program the test bed started.
type Process struct{ p *proc }

// StartInControlPlane runs a program in the control plane's network namespace (where
// AdminKubeconfig reaches the API server), logging to a file of the test bed. It dies with the
// caller, and with the test bed.
func (c *Cluster) StartInControlPlane(name, bin string, args ...string) (*Process, error) {
	p, err := c.start(name, c.NS, filepath.Join(c.Dir, name+".log"), nil, bin, args...)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// PID is the process's id.
func (p *Process) PID() int { return p.p.pid() }

// Log is the path of its log.
func (p *Process) Log() string { return p.p.log }

// Running reports whether it still runs.
func (p *Process) Running() bool { return !p.p.exited() }

// Stop asks it to end (SIGTERM, then SIGKILL after 10 s) and waits.
func (p *Process) Stop() { p.p.stop() }

// Start is the usual opening of a test on the test bed: a control plane torn down with the test,
// holding services Services of endpoints endpoints each (none if services is 0), and one running
// kube-proxy for each of opts, each synced once. It fails the test on any error.
func Start(tb testing.TB, services, endpoints int, opts ...KubeProxyOptions) (*Cluster, []*KubeProxy) {
	tb.Helper()
	ctx := context.Background()
	c, err := Up(ctx, ClusterOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Down() })
	if services > 0 {
		if err := c.Load(ctx, services, endpoints); err != nil {
			tb.Fatal(err)
		}
	}
	var kps []*KubeProxy
	for _, o := range opts {
		kp, err := c.StartKubeProxy(ctx, o)
		if err != nil {
			tb.Fatal(err)
		}
		kps = append(kps, kp)
	}
	for _, kp := range kps {
		if err := kp.WaitSynced(ctx, 1, 2*time.Minute); err != nil {
			tb.Fatal(err)
		}
	}
	return c, kps
}
