package agent

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/locate"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/state"
	"kptune/internal/target"
	"kptune/internal/tune"
)

// node is what the agent reads and writes of its node: its processes, each kube-proxy it holds, and
// what kube-proxy spends. hostNode is the real one; the agent's decisions are tested with others.
type node struct {
	list    func() ([]procfs.Process, error)
	exeID   func(pid int) (dev, ino uint64, err error)
	open    func(ctx context.Context, p procfs.Process) (kubeProxy, error)
	sampler sampler
}

// kubeProxy is one kube-proxy the agent holds: found once, read every round, written when its
// period is to change.
type kubeProxy interface {
	version() string
	// locate finds its sync runners (a scan); an error wrapping layout.ErrNoLayout or
	// locate.ErrScanLimit refuses the process for good.
	locate(ctx context.Context) error
	// read reads the runners again, without a scan; an error means they are to be located again.
	read() ([]locate.Found, error)
	// syncPeriod is kube-proxy's syncPeriod, from its /configz (its default where unreadable).
	syncPeriod(ctx context.Context) time.Duration
	alive() bool
	writer
	close()
}

// writer changes a kube-proxy's minimum sync period through tune's rails, record and audit.
type writer interface {
	// set writes period d to every runner; it reports how long kube-proxy was stopped.
	set(ctx context.Context, d time.Duration) (stopped time.Duration, err error)
	// reset restores the values kube-proxy started with.
	reset(ctx context.Context) error
}

// sampler reads what a kube-proxy spends: its CPU time from /proc (free for kube-proxy), and its
// sync and change counters from its metrics (each reading costs it CPU).
type sampler interface {
	cpu(pid int) (time.Duration, error)
	sample(ctx context.Context, p procfs.Process) (sample, error)
}

// sample is one reading of kube-proxy's counters and CPU.
type sample struct {
	at      time.Time
	syncs   uint64
	syncSum float64
	changes float64
	cpu     time.Duration
	latency []kpmetrics.Bucket // kube-proxy's network programming latency histogram
}

// hostNode reads this host's /proc, holds each kube-proxy as a target.Process and writes with tune.
func hostNode(o Options) node {
	store := state.Store{Dir: o.StateDir}
	return node{
		list:  target.Candidates,
		exeID: procfs.ExeID,
		open: func(ctx context.Context, p procfs.Process) (kubeProxy, error) {
			t, err := target.Open(ctx, p.PID)
			if err != nil {
				return nil, err
			}
			if t.StartTime != p.StartTime {
				t.Close()
				return nil, fmt.Errorf("pid %d: %w", p.PID, target.ErrGone)
			}
			return &held{t: t, store: store, log: o.Log}, nil
		},
		sampler: procSampler{},
	}
}

// held is a kube-proxy as the agent holds it: located once, then read and written without a scan.
type held struct {
	t     *target.Process
	store state.Store
	log   *slog.Logger
}

func (h *held) version() string { return h.t.K8sVersion() }

func (h *held) locate(ctx context.Context) error {
	if err := h.t.Locate(ctx, target.LocateOptions{Locator: target.ByScan}); err != nil {
		return err
	}
	// The layout is known: the type descriptors need not stay in memory, and the agent's footprint
	// returns to its steady state at once rather than when the scavenger gets to it.
	h.t.ReleaseTypes()
	debug.FreeOSMemory()
	return nil
}

func (h *held) read() ([]locate.Found, error) { return h.t.Revalidate() }

func (h *held) syncPeriod(ctx context.Context) time.Duration {
	if ps, err := h.t.Periods(ctx); err == nil && ps.Sync > 0 {
		return ps.Sync
	}
	return defaultSyncPeriod
}

func (h *held) alive() bool { return procfs.Alive(h.t.PID, h.t.StartTime) }

func (h *held) set(ctx context.Context, d time.Duration) (time.Duration, error) {
	res, err := tune.Set(ctx, tune.Options{PID: h.t.PID, Change: patch.Change{MinInterval: &d}, Store: h.store, Log: h.log, Target: h.t})
	var stopped time.Duration
	for _, p := range res.Processes {
		stopped += time.Duration(p.StoppedNS)
	}
	return stopped, err
}

func (h *held) reset(ctx context.Context) error {
	_, err := tune.Reset(ctx, tune.Options{PID: h.t.PID, Store: h.store, Log: h.log, Target: h.t})
	return err
}

func (h *held) close() { h.t.Close() }

// defaultSyncPeriod is kube-proxy's default syncPeriod.
const defaultSyncPeriod = 30 * time.Second

// procSampler reads /proc and kube-proxy's metrics endpoint.
type procSampler struct{}

// sampleTimeout bounds one reading of kube-proxy's metrics.
const sampleTimeout = 5 * time.Second

func (procSampler) cpu(pid int) (time.Duration, error) { return procfs.CPU(pid) }

func (procSampler) sample(ctx context.Context, p procfs.Process) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, sampleTimeout)
	defer cancel()
	snap, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Scrape(ctx, kpmetrics.SyncDuration, kpmetrics.EndpointChanges, kpmetrics.ServiceChanges,
		kpmetrics.NetworkProgramming)
	if err != nil {
		return sample{}, err
	}
	cpu, err := procfs.CPU(p.PID)
	if err != nil {
		return sample{}, err
	}
	n, sum := snap.Histogram(kpmetrics.SyncDuration)
	return sample{at: snap.Time, syncs: n, syncSum: sum, cpu: cpu, latency: snap.Buckets(kpmetrics.NetworkProgramming),
		changes: snap.Value(kpmetrics.EndpointChanges) + snap.Value(kpmetrics.ServiceChanges)}, nil
}
