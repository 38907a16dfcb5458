package locate

import (
	"kptune/internal/layout"

	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Periods are the periods a kube-proxy was configured with (its /configz), which its runners hold.
type Periods struct {
	MinSync time.Duration // minSyncPeriod: the runner's minInterval
	Sync    time.Duration // syncPeriod: retryInterval (≥ 1.34), maxInterval (ipvs)
}

// Observation is a runner's first bytes, read at one moment.
type Observation []byte

// valueScan bounds how far into a runner, a token bucket and a rate.Limiter the value search looks.
const (
	runnerScan  = 256
	bucketScan  = 64
	limiterScan = 64
	// fixedMax is the maxInterval the iptables and nftables proxiers (and ≥ 1.34's full sync)
	// pass: one hour.
	fixedMax = time.Hour
)

// LayoutFromProcess observes the runner at addr twice, gap apart, and derives its layout from its
// values (LayoutFromValues).
func LayoutFromProcess(ctx context.Context, t Target, addr uint64, p Periods, gap time.Duration) (layout.Layout, error) {
	first, err := Observe(t, addr)
	if err != nil {
		return layout.Layout{}, err
	}
	select {
	case <-ctx.Done():
		return layout.Layout{}, ctx.Err()
	case <-time.After(gap):
	}
	second, err := Observe(t, addr)
	if err != nil {
		return layout.Layout{}, err
	}
	return LayoutFromValues(t, addr, first, second, p)
}

// Observe reads a runner's first bytes.
func Observe(t Target, addr uint64) (Observation, error) {
	o := make(Observation, runnerScan)
	if err := t.Mem.ReadMem(o, addr); err != nil {
		return nil, fmt.Errorf("read runner %#x: %w", addr, err)
	}
	return o, nil
}

// LayoutFromValues finds where a runner's fields are from the values they hold, for builds whose
// type descriptors and DWARF cannot be read: the name header pointing at "sync-runner"; minInterval,
// the first duration equal to the configured minSyncPeriod; (≥ 1.34) retryInterval, the next equal
// to syncPeriod; maxInterval, the next that holds syncPeriod or the proxiers' fixed hour and did not
// change between the two observations (time stamps do); run, the next pointer to a one-slot channel of
// empty elements; fn, the next pointer to a function value (whose first word is code); and (≤ 1.33)
// the limiter: the next (itab, data) pair whose data holds a float32 qps equal to 1s/minInterval and
// a pointer to a rate.Limiter whose float64 limit equals that qps, followed by its burst.
//
// The result keeps t.Layout's generation; its RunnerSize covers the fields found (the runner's true
// size is not in its values).
func LayoutFromValues(t Target, addr uint64, first, second Observation, p Periods) (layout.Layout, error) {
	gen := t.Layout.Generation
	l := layout.Layout{Generation: gen, Source: "values"}
	if len(first) < runnerScan || len(second) < runnerScan {
		return l, errors.New("runner observations are too short")
	}
	if p.MinSync <= 0 {
		return l, errors.New("a minimum sync period of 0 leaves no value to find the fields by")
	}
	word := func(o Observation, off uint64) uint64 {
		if off+8 > runnerScan {
			return 0 // beyond what was observed (a two-word field at the end)
		}
		return binary.LittleEndian.Uint64(o[off:])
	}
	w1 := func(off uint64) uint64 { return word(first, off) }
	w2 := func(off uint64) uint64 { return word(second, off) }
	stable := func(off uint64) bool { return w1(off) == w2(off) }
	next := func(from uint64, ok func(off uint64) bool) (uint64, bool) {
		for off := from; off+8 <= runnerScan; off += 8 {
			if ok(off) {
				return off, true
			}
		}
		return 0, false
	}
	var found bool
	if l.Name, found = next(0, func(off uint64) bool { return stable(off) && isName(t, w1(off), w1(off+8)) }); !found {
		return l, fmt.Errorf("runner %#x: no name header pointing at %q", addr, RunnerName)
	}
	if l.MinInterval, found = next(l.Name+16, func(off uint64) bool { return stable(off) && w1(off) == uint64(p.MinSync) }); !found {
		return l, fmt.Errorf("runner %#x: no field holds the configured minSyncPeriod %v", addr, p.MinSync)
	}
	after := l.MinInterval + 8
	if gen == layout.Runner {
		if l.RetryInterval, found = next(after, func(off uint64) bool { return stable(off) && w1(off) == uint64(p.Sync) }); !found {
			return l, fmt.Errorf("runner %#x: no field after minInterval holds the configured syncPeriod %v", addr, p.Sync)
		}
		after = l.RetryInterval + 8
	}
	if l.MaxInterval, found = next(after, func(off uint64) bool {
		v := w1(off)
		return stable(off) && (v == uint64(p.Sync) || v == uint64(fixedMax)) && v >= uint64(p.MinSync)
	}); !found {
		return l, fmt.Errorf("runner %#x: no constant field holds syncPeriod %v or %v", addr, p.Sync, fixedMax)
	}
	if l.Run, found = next(l.MaxInterval+8, func(off uint64) bool { return runChannel(t.Mem, w1(off)) }); !found {
		return l, fmt.Errorf("runner %#x: no run channel after maxInterval", addr)
	}
	if l.Fn, found = next(l.Run+8, func(off uint64) bool { return stable(off) && isFuncValue(t, w1(off)) }); !found {
		return l, fmt.Errorf("runner %#x: no function value after the run channel", addr)
	}
	l.RunnerSize = max(l.Fn, l.MaxInterval, l.RetryInterval) + 8
	if gen == layout.Runner {
		return l, nil
	}
	if l.Limiter, found = next(l.Fn+8, func(off uint64) bool {
		if off+16 > runnerScan || !stable(off) || !stable(off+8) || w1(off) == 0 {
			return false
		}
		return tokenBucket(t, &l, w1(off+8), QPSFor(p.MinSync))
	}); !found {
		return l, fmt.Errorf("runner %#x: no limiter whose token bucket holds qps %v", addr, QPSFor(p.MinSync))
	}
	l.RunnerSize = l.Limiter + 16
	return l, nil
}

func isName(t Target, ptr, n uint64) bool {
	if n != uint64(len(RunnerName)) || ptr == 0 {
		return false
	}
	b := make([]byte, n)
	return t.Mem.ReadMem(b, ptr) == nil && string(b) == RunnerName
}

// isFuncValue: p points at a funcval, whose first word is an address in the executable's code.
func isFuncValue(t Target, p uint64) bool {
	if p == 0 {
		return false
	}
	var w [8]byte
	if t.Mem.ReadMem(w[:], p) != nil {
		return false
	}
	pc := binary.LittleEndian.Uint64(w[:]) - t.Bias
	for _, prog := range t.Binary.ELF.Progs {
		if prog.Type == elf.PT_LOAD && prog.Flags&elf.PF_X != 0 && pc >= prog.Vaddr && pc-prog.Vaddr < prog.Memsz {
			return true
		}
	}
	return false
}

// tokenBucket checks the limiter's data for the token bucket's relations and records the offsets.
func tokenBucket(t Target, l *layout.Layout, data uint64, qps float32) bool {
	if data == 0 {
		return false
	}
	tb := make([]byte, bucketScan)
	if t.Mem.ReadMem(tb, data) != nil {
		return false
	}
	le := binary.LittleEndian
	qOff := -1
	for off := 0; off+4 <= len(tb); off += 4 {
		if math.Float32frombits(le.Uint32(tb[off:])) == qps {
			qOff = off
			break
		}
	}
	if qOff < 0 {
		return false
	}
	rl := make([]byte, limiterScan)
	for off := 0; off+8 <= len(tb); off += 8 {
		p := le.Uint64(tb[off:])
		if p == 0 || t.Mem.ReadMem(rl, p) != nil {
			continue
		}
		for lim := 0; lim+16 <= len(rl); lim += 8 {
			burst := le.Uint64(rl[lim+8:])
			if math.Float64frombits(le.Uint64(rl[lim:])) == float64(qps) && burst >= 1 && burst <= 1<<20 {
				l.TBLimiter, l.TBQPS, l.RateLimit, l.RateBurst = uint64(off), uint64(qOff), uint64(lim), uint64(lim+8)
				// tokens and the mutex have no value to find them by: tokens follows burst where the
				// mutex leads the struct (x/time ≥ 2021: mu, limit, burst, tokens) and the mutex where
				// it follows burst (before: limit, burst, mu, tokens); at 24 either way.
				l.RateTokens, l.RateMu, l.RateMuKnown = 0, 0, false
				switch lim {
				case 0:
					l.RateTokens, l.RateMu, l.RateMuKnown = 24, 16, true
				case 8:
					l.RateTokens, l.RateMu, l.RateMuKnown = 24, 0, true
				}
				return true
			}
		}
	}
	return false
}
