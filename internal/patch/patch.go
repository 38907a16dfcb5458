// Package patch computes and applies the in-place change of a sync runner: exactly what kube-proxy's
// constructor would have computed for the new period, written inside one short stop of the process
// after every invariant has been checked again.
//
// For the old generation (k8s ≤ 1.33) the constructor computes
//
//	qps := float32(time.Second) / float32(minInterval)
//	rate.NewLimiter(rate.Limit(qps), burst)   // limit = float64(qps)
//
// so a retune writes minInterval, the token bucket's float32 qps and the rate.Limiter's float64
// limit (and burst when asked). Changing minInterval alone would not change the rate. The new
// generation (k8s ≥ 1.34) re-reads minInterval after every run: minInterval (and retryInterval,
// maxInterval when asked) is all there is.
package patch

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"kptune/internal/layout"
	"kptune/internal/locate"
)

// Change is what to set; nil fields stay as they are.
type Change struct {
	MinInterval   *time.Duration
	Burst         *int64         // old generation
	RetryInterval *time.Duration // new generation
	MaxInterval   *time.Duration // new generation: the full-sync period
}

// Write is one field to change: from Old to New, or, where Adjust is set, to what Adjust makes of
// the value read inside the stop (a field kube-proxy changes as it runs; nil: leave it).
type Write struct {
	Field    string
	Addr     uint64
	Old, New []byte
	Adjust   func(cur []byte) ([]byte, error)
}

// Values are a runner's tuned fields.
type Values struct {
	MinInterval   time.Duration `json:"minInterval"`
	MaxInterval   time.Duration `json:"maxInterval"`
	RetryInterval time.Duration `json:"retryInterval,omitempty"`
	QPS           float32       `json:"qps,omitempty"`
	Limit         float64       `json:"limit,omitempty"`
	Burst         int64         `json:"burst,omitempty"`
}

// MarshalJSON writes durations as Go duration strings ("1s", "3.7s").
func (v Values) MarshalJSON() ([]byte, error) {
	type out struct {
		MinInterval   string  `json:"minInterval"`
		MaxInterval   string  `json:"maxInterval"`
		RetryInterval string  `json:"retryInterval,omitempty"`
		QPS           float32 `json:"qps,omitempty"`
		Limit         float64 `json:"limit,omitempty"`
		Burst         int64   `json:"burst,omitempty"`
	}
	o := out{MinInterval: v.MinInterval.String(), MaxInterval: v.MaxInterval.String(), QPS: v.QPS, Limit: v.Limit, Burst: v.Burst}
	if v.RetryInterval != 0 {
		o.RetryInterval = v.RetryInterval.String()
	}
	return json.Marshal(o)
}

// ValuesOf returns the tuned fields of a found runner.
func ValuesOf(f locate.Found) Values {
	return Values{MinInterval: f.MinInterval, MaxInterval: f.MaxInterval, RetryInterval: f.RetryInterval, QPS: f.QPS, Limit: f.Limit, Burst: f.Burst}
}

// ErrRefused is wrapped by every refusal of a change.
var ErrRefused = errors.New("refused")

// ErrUnpatchable is wrapped, besides ErrRefused, by the refusal of a runner whose values kptune
// does not know how to change (locate.Found.Reason says why).
var ErrUnpatchable = errors.New("runner cannot be retuned")

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// Plan returns the writes that turn runner f into what a fresh start with the changed values would
// hold, after checking the change is one kube-proxy itself would accept.
func Plan(f locate.Found, l layout.Layout, c Change) (Values, []Write, error) {
	if !f.Patchable {
		return Values{}, nil, fmt.Errorf("%w: %w: runner %#x: %s", ErrRefused, ErrUnpatchable, f.Address, f.Reason)
	}
	v := ValuesOf(f)
	if c.MinInterval != nil {
		v.MinInterval = *c.MinInterval
	}
	if c.MaxInterval != nil || c.RetryInterval != nil {
		if l.Generation != layout.Runner {
			return Values{}, nil, refuse("--retry-period and --full-sync-period exist only in the k8s ≥ 1.34 runner; this one is k8s ≤ 1.33")
		}
		if c.MaxInterval != nil {
			v.MaxInterval = *c.MaxInterval
		}
		if c.RetryInterval != nil {
			if *c.RetryInterval <= 0 {
				return Values{}, nil, refuse("retry period %v: must be positive", *c.RetryInterval)
			}
			v.RetryInterval = *c.RetryInterval
		}
	}
	if c.Burst != nil {
		if l.Generation != layout.Async {
			return Values{}, nil, refuse("--burst exists only in the k8s ≤ 1.33 runner (the ≥ 1.34 runner has no burst)")
		}
		if *c.Burst < 1 || *c.Burst > 1000 {
			return Values{}, nil, refuse("burst %d: must be between 1 and 1000", *c.Burst)
		}
		v.Burst = *c.Burst
	}
	switch {
	case v.MinInterval < 0:
		return Values{}, nil, refuse("minimum sync period %v: must not be negative", v.MinInterval)
	case v.MinInterval == 0 && l.Generation == layout.Async:
		return Values{}, nil, refuse("minimum sync period 0: in k8s ≤ 1.33 a period of 0 means a different (no-op) limiter, which cannot be swapped in place; use a small period such as 10ms, or restart kube-proxy")
	case v.MaxInterval < v.MinInterval:
		return Values{}, nil, refuse("minimum sync period %v is longer than the runner's maximum interval %v", v.MinInterval, v.MaxInterval)
	}
	le := binary.LittleEndian
	dur := func(d time.Duration) []byte { return le.AppendUint64(nil, uint64(d)) }
	var ws []Write
	add := func(field string, addr uint64, old, new []byte) {
		if string(old) != string(new) {
			ws = append(ws, Write{Field: field, Addr: addr, Old: old, New: new})
		}
	}
	add("minInterval", f.Address+l.MinInterval, dur(f.MinInterval), dur(v.MinInterval))
	if l.Generation == layout.Runner {
		add("retryInterval", f.Address+l.RetryInterval, dur(f.RetryInterval), dur(v.RetryInterval))
		add("maxInterval", f.Address+l.MaxInterval, dur(f.MaxInterval), dur(v.MaxInterval))
		return v, ws, nil
	}
	v.QPS = locate.QPSFor(v.MinInterval)
	v.Limit = float64(v.QPS)
	add("qps", f.QPSAddr, le.AppendUint32(nil, math.Float32bits(f.QPS)), le.AppendUint32(nil, math.Float32bits(v.QPS)))
	add("limit", f.LimitAddr+l.RateLimit, le.AppendUint64(nil, math.Float64bits(f.Limit)), le.AppendUint64(nil, math.Float64bits(v.Limit)))
	add("burst", f.LimitAddr+l.RateBurst, le.AppendUint64(nil, uint64(f.Burst)), le.AppendUint64(nil, uint64(v.Burst)))
	if v.Limit < f.Limit && f.Limit > 0 && l.RateTokens != 0 {
		ws = append(ws, Write{Field: "tokens", Addr: f.LimitAddr + l.RateTokens, Adjust: keepNextRun(f.Limit, v.Limit, f.Burst)})
	}
	return v, ws, nil
}

// keepNextRun adjusts the token bucket when the period is raised, so that the run kube-proxy has
// already scheduled is allowed when it was due, and the new period paces the runs after it.
//
// The k8s ≤ 1.33 runner asks the limiter when its timer fires and, refused, re-arms the timer with
// the time left to the next scheduled run, which is negative once that time has passed: it then
// spins, a core busy, until the limiter allows a run. Unchanged, the bucket's tokens at the lower
// rate would come to one up to a new period after the last run, while the timer armed under the old
// period fires one old period after it. Keeping the moment the bucket holds a token, last + (1 −
// tokens) / limit, the same under the new limit keeps the two in step:
//
//	tokens' = 1 − (1 − tokens) × newLimit / oldLimit
//
// The same formula keeps a bucket holding more than a token in step: a run is allowed now, and the
// credit beyond it (tokens − 1) is kept as the same time at the new rate. kube-proxy's bucket does
// not store one: rate.Limiter stores its tokens only when it grants a run, which takes one, so at
// most burst − 1. (A sync that waited past its token for a long one before it is followed sooner
// than a period, by that wait: the bucket counts from the token, as any token bucket credits a late
// taker; test/churn Spacing.) A value no bucket of this burst holds (outside [0, burst]: kube-proxy
// only ever asks it for a run now, which takes tokens only when there is one) is refused: nothing
// is written.
func keepNextRun(oldLimit, newLimit float64, burst int64) func([]byte) ([]byte, error) {
	return func(cur []byte) ([]byte, error) {
		if len(cur) != 8 {
			return nil, fmt.Errorf("tokens: read %d bytes", len(cur))
		}
		tokens := math.Float64frombits(binary.LittleEndian.Uint64(cur))
		if !(tokens >= 0 && tokens <= float64(burst)) {
			return nil, fmt.Errorf("the rate limiter holds %v tokens, not what a bucket of burst %d holds: %w", tokens, burst, locate.ErrStale)
		}
		return binary.LittleEndian.AppendUint64(nil, math.Float64bits(1-(1-tokens)*newLimit/oldLimit)), nil
	}
}
