package agent

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "kptune"

// metrics are the agent's own Prometheus metrics.
type metrics struct {
	reg         *prometheus.Registry
	kubeProxies prometheus.Gauge
	period      *prometheus.GaugeVec // per runner, as last read
	desired     *prometheus.GaugeVec // per process
	writes      *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	locate      prometheus.Histogram
	stop        prometheus.Histogram
	cpu         *prometheus.GaugeVec
	syncCost    *prometheus.GaugeVec
	changes     *prometheus.GaugeVec
	reloads     *prometheus.CounterVec
	lastLoop    prometheus.Gauge
	refused     *prometheus.CounterVec
	panics      prometheus.Counter
	overrides   *prometheus.CounterVec
	// A latency objective's attainment, per kube-proxy, over the policy's last window.
	latency      *prometheus.GaugeVec
	objectiveMet *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		kubeProxies: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "kube_proxies",
			Help: "The kube-proxy processes the agent manages on this node."}),
		period: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "min_sync_period_seconds",
			Help: "The minimum sync period a kube-proxy sync runner holds, as last read from its memory."}, []string{"pid", "runner"}),
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "desired_min_sync_period_seconds",
			Help: "The minimum sync period the policy (or the node's override) chose for a kube-proxy."}, []string{"pid", "source"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "writes_total",
			Help: "Changes written to a kube-proxy (set or reset)."}, []string{"action"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "refusals_total",
			Help: "Changes not written, because a check refused them or the write failed."}, []string{"action"}),
		locate: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "locate_duration_seconds",
			Help: "The time to find a kube-proxy's sync runners.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		stop: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "stop_duration_seconds",
			Help: "How long a write kept kube-proxy stopped.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}),
		cpu: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_kube_proxy_cpu_cores",
			Help: "kube-proxy's CPU, its children's included, over the policy's last window."}, []string{"pid"}),
		syncCost: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_sync_cost_seconds",
			Help: "The CPU one sync cost kube-proxy over the policy's last window."}, []string{"pid"}),
		changes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_changes_per_second",
			Help: "Service and endpoint changes kube-proxy received a second, over the policy's last window."}, []string{"pid"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "config_reloads_total",
			Help: "Reloads of the configuration file."}, []string{"result"}),
		lastLoop: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "last_reconcile_timestamp_seconds",
			Help: "When the agent last went over the node's kube-proxies."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "processes_refused_total",
			Help: "Processes that looked like a kube-proxy and were refused: by their identity (uid, executable, build information), by what locating their runners found, or after a panic reading them."}, []string{"reason"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "panics_total",
			Help: "Panics recovered while reading a process; the process is refused and the agent goes on."}),
		overrides: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "override_rejected_total",
			Help: "Values of the node's kptune.io/min-sync-period annotation not held as given: ignored (not a positive duration) or clamped to the configuration's floor or ceiling."}, []string{"result"}),
	}
	m.latency = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_latency_seconds",
		Help: "kube-proxy's network programming latency at the objective's quantile, over the policy's last window."}, []string{"pid", "quantile"})
	m.objectiveMet = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "policy_objective_met",
		Help: "1 if kube-proxy's network programming latency met the objective over the policy's last window, 0 if not (absent: too few changes to tell)."}, []string{"pid"})
	m.reg.MustRegister(m.own()...)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) own() []prometheus.Collector {
	return []prometheus.Collector{m.kubeProxies, m.period, m.desired, m.writes, m.refusals, m.locate, m.stop, m.cpu,
		m.syncCost, m.changes, m.reloads, m.lastLoop, m.refused, m.panics, m.overrides, m.latency, m.objectiveMet}
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames lists the agent's own metrics (kptune_*), for dashboards and their tests.
func MetricNames() []string {
	var names []string
	for _, c := range newMetrics().own() {
		ch := make(chan *prometheus.Desc, 4)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				names = append(names, m[1])
			}
		}
	}
	return names
}

// forget drops the series of a process that is gone.
func (m *metrics) forget(pid string) {
	m.period.DeletePartialMatch(prometheus.Labels{"pid": pid})
	m.desired.DeletePartialMatch(prometheus.Labels{"pid": pid})
	m.cpu.DeleteLabelValues(pid)
	m.syncCost.DeleteLabelValues(pid)
	m.changes.DeleteLabelValues(pid)
	m.latency.DeletePartialMatch(prometheus.Labels{"pid": pid})
	m.objectiveMet.DeleteLabelValues(pid)
}
