// Package agent keeps every kube-proxy of a node at the minimum sync period a policy chooses, by
// itself: it finds the node's kube-proxy processes, locates their sync runners once, reads their
// periods each round (a few hundred bytes, no scan), decides with the configured policy (or the
// Node's kptune.io/min-sync-period annotation), writes only when the period differs, and starts
// over when kube-proxy restarts. It serves its own Prometheus metrics, /healthz and /readyz, records
// an Event on its Node for every change, and reloads its configuration file when it changes.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"kptune/internal/kpmetrics"
	"kptune/internal/policy"
	"kptune/internal/procfs"
	"kptune/internal/target"
)

// Options configure an agent.
type Options struct {
	ConfigPath  string        // the configuration file, reloaded when it changes ("": Config)
	Config      Config        // the configuration without a file
	Interval    time.Duration // how often to look over the node's kube-proxies
	Listen      string        // metrics, /healthz and /readyz ("": none)
	Kubeconfig  string        // "": in-cluster, or no API server outside a cluster
	NodeName    string        // this node; only kube-proxies serving it are managed
	StateDir    string
	ResetOnExit bool // restore every kube-proxy the agent changed when it stops
	Log         *slog.Logger
	// Ready, if set, receives the listener's address once the agent serves.
	Ready chan<- string
}

// retryAfter is how long a refused or failed write waits before the same value is tried again.
const retryAfter = time.Minute

// Agent is a running node agent.
type Agent struct {
	o      Options
	log    *slog.Logger
	m      *metrics
	kube   *kube
	cfg    Config
	cfgRaw []byte
	pol    policy.Policy

	node node             // the node's processes and how they are read and written
	now  func() time.Time // the clock the agent decides by

	procs map[key]*managed
	other map[key]bool // processes known not to be a kube-proxy of this node, or refused
	ready atomic.Bool
	last  atomic.Int64
	// blocked says why the agent cannot work at all (a privilege it lacks); set before it serves.
	blocked string
}

// New checks the options and loads the configuration.
func New(o Options) (*Agent, error) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	a := &Agent{o: o, log: o.Log, m: newMetrics(), cfg: o.Config, node: hostNode(o), now: time.Now, procs: map[key]*managed{}, other: map[key]bool{}}
	if o.ConfigPath != "" {
		cfg, raw, err := LoadConfig(o.ConfigPath)
		if err != nil {
			return nil, err
		}
		a.cfg, a.cfgRaw = cfg, raw
	}
	pol, err := a.cfg.Build()
	if err != nil {
		return nil, err
	}
	a.pol = pol
	return a, nil
}

// Run serves and reconciles until ctx ends, then (with ResetOnExit) restores what it changed.
func (a *Agent) Run(ctx context.Context) error {
	if cfg, err := restConfig(a.o.Kubeconfig); err != nil {
		return fmt.Errorf("API server configuration: %w", err)
	} else if cfg != nil {
		if a.o.NodeName == "" {
			return errors.New("with an API server the agent needs its node's name: --node-name or NODE_NAME (the downward API's spec.nodeName)")
		}
		if a.kube, err = newKube(ctx, cfg, a.o.NodeName, a.log); err != nil {
			return err
		}
		defer a.kube.close()
	} else {
		a.log.Info("no API server: no node override, no Events")
	}
	if a.o.Listen != "" {
		srv, err := a.serve()
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	a.log.Info("agent started", "policy", a.pol.Name(), "node", a.o.NodeName, "interval", a.o.Interval)
	if why := missingPrivilege(); why != "" {
		// Without it every kube-proxy would look unreadable, and be skipped without a word.
		a.blocked = why
		a.log.Error("the agent cannot work: it writes nothing and stays unready", "reason", why)
		a.kube.event(corev1.EventTypeWarning, "MissingCapability", "kptune agent: %s", why)
	}
	tick := time.NewTicker(a.o.Interval)
	defer tick.Stop()
	for {
		if a.blocked == "" {
			a.reconcile(ctx)
		} else {
			a.last.Store(time.Now().UnixNano()) // alive, and saying why it is not ready
		}
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-tick.C:
		}
	}
}

func (a *Agent) serve() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.o.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.o.Listen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		last := time.Unix(0, a.last.Load())
		if age := time.Since(last); age > 3*a.o.Interval+10*time.Second {
			http.Error(w, fmt.Sprintf("last reconcile %v ago", age.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.blocked != "" {
			http.Error(w, a.blocked, http.StatusServiceUnavailable)
			return
		}
		if !a.ready.Load() {
			http.Error(w, "not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	a.log.Info("serving metrics, /healthz and /readyz", "address", ln.Addr().String())
	if a.o.Ready != nil {
		a.o.Ready <- ln.Addr().String()
	}
	return srv, nil
}

// reconcile is one round: configuration, discovery, and each kube-proxy.
func (a *Agent) reconcile(ctx context.Context) {
	a.reload()
	a.discover(ctx)
	for k, mp := range a.procs {
		if ctx.Err() != nil {
			return
		}
		if !a.guard(k.pid, "tend", func() { a.tend(ctx, mp, a.now()) }) {
			mp.gaveUp = true
		}
		if mp.gaveUp {
			// Refused for good (a panic, or what locating it found): examined again only if it
			// execs another executable.
			mp.kp.close()
			a.m.forget(strconv.Itoa(k.pid))
			delete(a.procs, k)
			a.other[k] = true
		}
	}
	a.m.kubeProxies.Set(float64(len(a.procs)))
	now := time.Now()
	a.last.Store(now.UnixNano())
	a.m.lastLoop.Set(float64(now.Unix()))
	a.ready.Store(true)
}

// reload rereads the configuration file; a bad one is reported and the last good one kept.
func (a *Agent) reload() {
	if a.o.ConfigPath == "" {
		return
	}
	raw, err := os.ReadFile(a.o.ConfigPath)
	if err == nil && bytes.Equal(raw, a.cfgRaw) {
		return
	}
	var cfg Config
	var pol policy.Policy
	if err == nil {
		if cfg, err = ParseConfig(raw); err == nil {
			pol, err = cfg.Build()
		}
	}
	if err != nil {
		if !bytes.Equal(raw, a.cfgRaw) {
			a.m.reloads.WithLabelValues("error").Inc()
			a.log.Warn("configuration not reloaded, keeping the last good one", "error", err)
			a.cfgRaw = raw
		}
		return
	}
	a.cfg, a.cfgRaw, a.pol = cfg, raw, pol
	a.m.reloads.WithLabelValues("ok").Inc()
	a.log.Info("configuration reloaded", "policy", pol.Name())
	for _, mp := range a.procs {
		mp.resetAdaptive()
		mp.refused = 0
	}
}

// discover finds the node's kube-proxy processes; each process is examined once.
func (a *Agent) discover(ctx context.Context) {
	procs, err := a.node.list()
	if err != nil {
		a.log.Warn("list processes", "error", err)
		return
	}
	seen := map[key]bool{}
	for _, p := range procs {
		k := key{pid: p.PID, start: p.StartTime}
		k.dev, k.ino, _ = a.node.exeID(p.PID) // 0, 0 for a process that exited meanwhile: seen next round
		seen[k] = true
		if a.other[k] || a.procs[k] != nil {
			continue
		}
		a.other[k] = true // until examined to the end: a panic leaves it refused
		a.guard(p.PID, "examine", func() {
			if !a.serves(p) {
				// Checked first: the process's command line is all it takes, and a kube-proxy of
				// another node is never opened.
				if kp, err := a.node.open(ctx, p); err == nil {
					kp.close()
					node, _ := kpmetrics.FlagValue(p.Cmdline, "--hostname-override")
					a.log.Info("kube-proxy of another node: left alone", "pid", p.PID, "node", node)
				}
				return
			}
			kp, err := a.node.open(ctx, p)
			switch {
			case errors.Is(err, target.ErrSuspect):
				a.refuse(p.PID, "identity", err)
				return
			case err != nil:
				return
			}
			delete(a.other, k)
			a.procs[k] = &managed{key: k, proc: p, kp: kp}
			a.log.Info("kube-proxy found", "pid", p.PID, "k8s", kp.version())
		})
	}
	for k, mp := range a.procs {
		if !seen[k] {
			a.log.Info("kube-proxy gone", "pid", k.pid)
			a.m.forget(strconv.Itoa(k.pid))
			mp.kp.close()
			delete(a.procs, k)
		}
	}
	for k := range a.other {
		if !seen[k] {
			delete(a.other, k)
		}
	}
}

// serves reports whether a kube-proxy serves this node: its --hostname-override, where it has one,
// names it.
func (a *Agent) serves(p procfs.Process) bool {
	if a.o.NodeName == "" {
		return true
	}
	v, ok := kpmetrics.FlagValue(p.Cmdline, "--hostname-override")
	return !ok || v == a.o.NodeName
}

// guard runs one process's work (target.Safely); a panic in it (a defect in reading what that
// process holds) is logged with its stack and counted, refuses that process rather than ending the
// agent, and is reported as false. Never used inside a stop of kube-proxy: a panic there ends the
// agent, and the kernel releases kube-proxy.
func (a *Agent) guard(pid int, what string, fn func()) bool {
	var pe *target.PanicError
	if err := target.Safely(pid, fn); errors.As(err, &pe) {
		a.m.panics.Inc()
		a.refuse(pid, "panic", fmt.Errorf("%s: %w\n%s", what, pe, pe.Stack))
		return false
	}
	return true
}

// refuse reports a process the agent will not manage, with why.
func (a *Agent) refuse(pid int, reason string, err error) {
	a.m.refused.WithLabelValues(reason).Inc()
	a.log.Warn("process refused", "pid", pid, "reason", reason, "error", err)
}

// shutdown restores the kube-proxies the agent changed, when asked to.
func (a *Agent) shutdown() {
	// The agent's context has ended: the resets get a context of their own, bounded.
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, mp := range a.procs {
		if a.o.ResetOnExit && mp.changed {
			if err := mp.kp.reset(ctx); err != nil {
				a.m.refusals.WithLabelValues("reset").Inc()
				a.log.Warn("reset on exit", "pid", mp.proc.PID, "error", err)
			} else {
				a.m.writes.WithLabelValues("reset").Inc()
				a.kube.event(corev1.EventTypeNormal, "MinSyncPeriodReset", "kube-proxy pid %d: restored the minimum sync period it started with (agent stopping)", mp.proc.PID)
			}
		}
		mp.kp.close()
	}
	a.log.Info("agent stopped")
}

// shutdownTimeout bounds the resets on exit (the kubelet's grace period is 30 s by default).
const shutdownTimeout = 20 * time.Second

// missingPrivilege says which privilege the agent lacks to read and stop a kube-proxy, or "": user
// root (kube-proxy runs as root, and a process's memory is readable by its own user) and the
// effective capability CAP_SYS_PTRACE (kube-proxy holds capabilities the agent does not, so even
// root needs it to read /proc/PID/mem and to stop it).
func missingPrivilege() string {
	if os.Geteuid() != 0 {
		return fmt.Sprintf("it runs as uid %d, not root: run it as root (the chart's securityContext.runAsUser 0)", os.Geteuid())
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Sprintf("cannot read its capabilities: %v", err)
	}
	if data[unix.CAP_SYS_PTRACE/32].Effective&(1<<(unix.CAP_SYS_PTRACE%32)) == 0 {
		return "it lacks the capability CAP_SYS_PTRACE: add SYS_PTRACE to the container's securityContext.capabilities (the chart's capabilities value)"
	}
	return ""
}
