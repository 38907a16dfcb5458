// Package kpmetrics reads kube-proxy's own Prometheus metrics: how often and how long it syncs its
// rules, how many changes wait, and how long a change takes to reach the node.
//
// kube-proxy serves them on its metrics address (127.0.0.1:10249 by default) in its own network
// namespace, so a Client dials through a netns.Dialer. From k8s 1.33 most series carry an ip_family
// label, and a dual-stack kube-proxy reports one series per family: the accessors here sum over
// label sets unless said otherwise, which is what "syncs of this process" means.
package kpmetrics

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"kptune/internal/netns"
)

// Metric names kube-proxy exposes (all of them since k8s 1.20 unless noted).
const (
	SyncDuration        = "kubeproxy_sync_proxy_rules_duration_seconds"
	SyncFullDuration    = "kubeproxy_sync_full_proxy_rules_duration_seconds"    // 1.28+
	SyncPartialDuration = "kubeproxy_sync_partial_proxy_rules_duration_seconds" // 1.28+
	LastSyncTimestamp   = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	LastQueuedTimestamp = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
	NetworkProgramming  = "kubeproxy_network_programming_duration_seconds"
	EndpointChanges     = "kubeproxy_sync_proxy_rules_endpoint_changes_total"
	ServiceChanges      = "kubeproxy_sync_proxy_rules_service_changes_total"
	RestoreFailures     = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
	NFTablesFailures    = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" // 1.31+
)

// maxBody bounds what a scrape reads: a kube-proxy's metrics page is tens of KiB.
const maxBody = 16 << 20

// Snapshot is one scrape of kube-proxy's metrics.
type Snapshot struct {
	Time     time.Time
	Families map[string]*dto.MetricFamily
}

// Parse reads the Prometheus text exposition format: every family, or only the families named
// (the rest of kube-proxy's page, its Go runtime and client metrics, is most of it, and parsing it
// most of what a reading costs).
func Parse(r io.Reader, only ...string) (Snapshot, error) {
	r = capped(r, maxBody)
	if len(only) > 0 {
		var err error
		if r, err = filter(r, only); err != nil {
			return Snapshot{}, fmt.Errorf("read kube-proxy metrics: %w", err)
		}
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Snapshot{}, fmt.Errorf("parse kube-proxy metrics: %w", err)
	}
	return Snapshot{Time: time.Now(), Families: fams}, nil
}

// filter reads the page and keeps the lines of the families named (their HELP and TYPE comments,
// and their samples, a histogram's _bucket, _sum and _count included).
func filter(r io.Reader, only []string) (io.Reader, error) {
	keep := map[string]bool{}
	for _, n := range only {
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			keep[n+suffix] = true
		}
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		line := sc.Bytes()
		name := line
		if rest, ok := bytes.CutPrefix(line, []byte("# ")); ok {
			f := bytes.Fields(rest)
			if len(f) < 2 || (string(f[0]) != "HELP" && string(f[0]) != "TYPE") {
				continue
			}
			name = f[1]
		} else if i := bytes.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		if keep[string(name)] {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return nil, fmt.Errorf("a line longer than %d bytes: not a kube-proxy's metrics page", maxLine)
	}
	return &out, sc.Err()
}

// capped reads at most limit bytes of r, and fails rather than stop quietly when r holds more: a
// page cut short would parse as one without the families past the cut.
func capped(r io.Reader, limit int64) io.Reader {
	return &capReader{r: r, limit: limit, left: limit}
}

type capReader struct {
	r           io.Reader
	limit, left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		var one [1]byte
		if n, _ := io.ReadFull(c.r, one[:]); n > 0 {
			return 0, fmt.Errorf("more than %d bytes: not a kube-proxy's metrics page", c.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// maxLine bounds one line of the page (a sample with its labels: well under a KiB).
const maxLine = 1 << 20

// Has reports whether the scrape holds the named metric.
func (s Snapshot) Has(name string) bool { _, ok := s.Families[name]; return ok }

// Value sums a counter's or gauge's samples over all label sets.
func (s Snapshot) Value(name string) float64 {
	var v float64
	for _, m := range s.metrics(name) {
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Untyped != nil:
			v += m.Untyped.GetValue()
		}
	}
	return v
}

// Max returns the largest sample of a gauge over all label sets (timestamps of a dual-stack
// kube-proxy: the latest of its proxiers).
func (s Snapshot) Max(name string) float64 {
	var v float64
	for i, m := range s.metrics(name) {
		if g := m.Gauge.GetValue(); i == 0 || g > v {
			v = g
		}
	}
	return v
}

// Histogram sums a histogram's sample count and sum over all label sets.
func (s Snapshot) Histogram(name string) (count uint64, sum float64) {
	for _, m := range s.metrics(name) {
		count += m.Histogram.GetSampleCount()
		sum += m.Histogram.GetSampleSum()
	}
	return count, sum
}

// Sums are a histogram's sample count and sum.
type Sums struct {
	Count uint64
	Sum   float64
}

// Mean is the histogram's mean sample, 0 without one.
func (h Sums) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / float64(h.Count)
}

// ByFamily sums a histogram's sample count and sum for each of kube-proxy's proxiers, by the
// ipFamily label of its sync metrics ("" where a sample has none). A dual-stack kube-proxy's two
// proxiers sync apart, one of them often with nothing to sync.
func (s Snapshot) ByFamily(name string) map[string]Sums {
	by := map[string]Sums{}
	for _, m := range s.metrics(name) {
		family := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == "ip_family" {
				family = l.GetValue()
			}
		}
		h := by[family]
		h.Count += m.Histogram.GetSampleCount()
		h.Sum += m.Histogram.GetSampleSum()
		by[family] = h
	}
	return by
}

// Syncs is the number of rule syncs kube-proxy has run, over all its proxiers.
func (s Snapshot) Syncs() uint64 {
	n, _ := s.Histogram(SyncDuration)
	return n
}

func (s Snapshot) metrics(name string) []*dto.Metric {
	if f, ok := s.Families[name]; ok {
		return f.GetMetric()
	}
	return nil
}

// Client scrapes one kube-proxy.
type Client struct {
	http    *http.Client
	address string
}

// NewClient returns a Client for the metrics server at address (IP:port) in the namespace of d.
func NewClient(d netns.Dialer, address string) *Client {
	// Uncompressed: the reply crosses loopback or a namespace's veth, and gzip would cost kube-proxy
	// the CPU of compressing it at every reading.
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true, DisableCompression: true}
	return &Client{http: &http.Client{Transport: tr, Timeout: 10 * time.Second}, address: address}
}

// ForProcess returns a Client for kube-proxy process pid, run with the arguments cmdline.
func ForProcess(pid int, cmdline []string) *Client {
	return NewClient(netns.ForPID(pid), Address(cmdline))
}

// Address is kube-proxy's metrics server as seen from inside its network namespace: its
// --metrics-bind-address, with an unspecified host read as loopback.
func Address(cmdline []string) string {
	addr := "127.0.0.1:10249"
	if v, ok := FlagValue(cmdline, "--metrics-bind-address"); ok && v != "" {
		if host, port, err := net.SplitHostPort(v); err == nil {
			if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
				host = "127.0.0.1"
			}
			addr = net.JoinHostPort(host, port)
		}
	}
	return addr
}

// FlagValue reads a flag from a command line, as --name=value or --name value.
func FlagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// Scrape fetches and parses /metrics: every family, or only the families named.
func (c *Client) Scrape(ctx context.Context, only ...string) (Snapshot, error) {
	var s Snapshot
	err := c.get(ctx, "/metrics", "scrape kube-proxy metrics", func(r io.Reader) (err error) {
		s, err = Parse(r, only...)
		return err
	})
	return s, err
}

// get fetches one of kube-proxy's pages and hands a 200's body to parse.
func (c *Client) get(ctx context.Context, path, what string, parse func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.address+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s at %s: %w", what, c.address, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s at %s: %s", what, c.address, resp.Status)
	}
	return parse(resp.Body)
}
