// Package locate finds kube-proxy's sync runners in a live process, by the binary's runner layout
// (package layout), and reads the values they live by: a scan of the process's writable memory for
// the runner's signature (its name string header pointing at the binary's "sync-runner" bytes,
// plausible durations, its run channel (buffered, one slot, empty elements), and in the old
// generation a limiter whose dynamic type is the token bucket and whose qps, limit and burst agree),
// then each runner read again at its address without a scan. It also infers a layout from a runner's
// values, to confirm the built-in one. Nothing is written and nothing is stopped.
package locate

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/memory"
	"kptune/internal/procfs"
)

// RunnerName is the name every proxier gives its runner.
const RunnerName = "sync-runner"

// Found is one runner instance and the values it lives by.
type Found struct {
	Address       uint64
	MinInterval   time.Duration
	MaxInterval   time.Duration
	RetryInterval time.Duration // new generation
	// Old generation: the token bucket.
	QPS       float32
	Limit     float64
	Burst     int64
	LimitAddr uint64 // the rate.Limiter
	QPSAddr   uint64 // the float32 qps copy
	Patchable bool
	Reason    string
}

// Target is what the scan needs of a process.
type Target struct {
	Mem    memory.Reader
	Maps   []procfs.Mapping
	Bias   uint64 // load bias of the executable (PIE), 0 otherwise
	Binary *gobin.Binary
	Layout layout.Layout
	// ScanLimit bounds the bytes the scan reads (0: MaxScan).
	ScanLimit uint64
}

// TargetOf prepares the scan of live process pid, whose executable b is: its layout, mappings and
// load bias.
func TargetOf(pid int, b *gobin.Binary) (Target, error) {
	l, err := layout.Of(b)
	if err != nil {
		return Target{}, err
	}
	maps, err := procfs.Maps(pid)
	if err != nil {
		return Target{Layout: l}, err
	}
	_, ino, err := procfs.ExeID(pid)
	if err != nil {
		return Target{Layout: l}, err
	}
	bias, err := LoadBias(b, maps, ino)
	if err != nil {
		return Target{Layout: l}, err
	}
	return Target{Mem: memory.Process{PID: pid}, Maps: maps, Bias: bias, Binary: b, Layout: l}, nil
}

// chunk bounds each read of the target's memory.
const chunk = 1 << 20

// MaxScan is how much of a process's writable memory the scan reads at most: a kube-proxy's is
// well under a GiB at 10k Services, and any process on a node can map terabytes (MAP_NORESERVE) to
// make a scan of it outlast everything else kptune has to do.
const MaxScan = 4 << 30

// maxRunners bounds the runners a scan returns: a kube-proxy has one per proxier, two in dual-stack.
const maxRunners = 16

// ErrScanLimit is returned when a process's writable memory, or the runners found in it, exceed the
// scan's limits.
var ErrScanLimit = errors.New("beyond the scan's limits")

// LoadBias computes where a PIE executable was loaded, from the mapping of its first page.
func LoadBias(b *gobin.Binary, maps []procfs.Mapping, exeInode uint64) (uint64, error) {
	if !b.PIE {
		return 0, nil
	}
	var first *elf.Prog
	for _, p := range b.ELF.Progs {
		if p.Type == elf.PT_LOAD && p.Off == 0 {
			first = p
			break
		}
	}
	if first == nil {
		return 0, errors.New("PIE executable without a PT_LOAD at file offset 0")
	}
	for _, m := range maps {
		if m.Inode == exeInode && m.Offset == 0 {
			return m.Start - first.Vaddr, nil
		}
	}
	return 0, errors.New("the executable's first page is not mapped: cannot compute the PIE load bias")
}

// nameAddrs returns the addresses (in the file's image) of the bytes "sync-runner" in the
// executable's read-only data: a runner's name header points at one of them. Sections are read in
// chunks, so that the 10 MiB of a kube-proxy's .rodata is never held at once.
func nameAddrs(b *gobin.Binary) []uint64 {
	var out []uint64
	needle := []byte(RunnerName)
	buf := make([]byte, chunk+len(needle))
	for _, s := range b.ELF.Sections {
		if s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_WRITE != 0 || s.Flags&elf.SHF_EXECINSTR != 0 || s.Type == elf.SHT_NOBITS {
			continue
		}
		r := s.Open()
		for off := uint64(0); off < s.Size; off += chunk {
			n, _ := r.Seek(int64(off), 0)
			if n != int64(off) {
				break
			}
			m, _ := io.ReadFull(r, buf[:min(uint64(len(buf)), s.Size-off)])
			for i := 0; ; {
				j := bytes.Index(buf[i:m], needle)
				if j < 0 || uint64(i+j) >= chunk {
					break
				}
				out = append(out, s.Addr+off+uint64(i+j))
				i += j + 1
			}
		}
	}
	return out
}

// Scan reads every private writable mapping of the target that holds anything but zeros, up to
// its ScanLimit, and returns the runners it validates. It stops when ctx ends.
func Scan(ctx context.Context, t Target) ([]Found, error) {
	if err := t.Layout.Check(); err != nil {
		return nil, err
	}
	limit := t.ScanLimit
	if limit == 0 {
		limit = MaxScan
	}
	var total uint64
	for _, m := range t.Maps {
		if scanned(m) {
			total += m.End - m.Start
		}
	}
	if total > limit {
		return nil, fmt.Errorf("%w: %d MiB of private writable memory in use, more than the %d MiB kptune reads of a kube-proxy", ErrScanLimit, total>>20, limit>>20)
	}
	names := nameAddrs(t.Binary)
	if len(names) == 0 {
		return nil, fmt.Errorf("the string %q is not in the executable: not a kube-proxy", RunnerName)
	}
	// The needles: a string header {ptr, 11} for each place "sync-runner" sits, found with
	// bytes.Index (vectorised), which is many times faster than testing every word.
	le := binary.LittleEndian
	var needles [][]byte
	for _, a := range names {
		n := le.AppendUint64(nil, a+t.Bias)
		needles = append(needles, le.AppendUint64(n, uint64(len(RunnerName))))
	}
	var found []Found
	seen := map[uint64]bool{}
	buf := make([]byte, chunk+16)
	for _, m := range t.Maps {
		if !scanned(m) {
			continue
		}
		for base := m.Start; base < m.End; base += chunk {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("scan stopped: %w", err)
			}
			n := min(uint64(chunk+16), m.End-base)
			if err := t.Mem.ReadMem(buf[:n], base); err != nil {
				if errors.Is(err, memory.ErrExited) || errors.Is(err, procfs.ErrPermission) {
					return nil, err
				}
				continue // a page unmapped since the maps were read
			}
			for _, needle := range needles {
				for i := 0; ; {
					j := bytes.Index(buf[i:n], needle)
					if j < 0 {
						break
					}
					off := uint64(i + j)
					i += j + 1
					if off%8 != 0 || off >= chunk {
						continue // not a Go string header, or the next chunk's
					}
					addr := base + off - t.Layout.Name
					if seen[addr] {
						continue
					}
					if f, ok := validate(t, addr); ok {
						if len(found) == maxRunners {
							return nil, fmt.Errorf("%w: more than %d sync runners, and a kube-proxy has one per proxier", ErrScanLimit, maxRunners)
						}
						seen[addr] = true
						found = append(found, f)
					}
				}
			}
		}
	}
	return found, nil
}

// scanned reports whether the scan reads a mapping: private, writable, and not known to be zeros.
func scanned(m procfs.Mapping) bool {
	return len(m.Perms) >= 4 && m.Perms[0] == 'r' && m.Perms[1] == 'w' && m.Perms[3] == 'p' && !m.Untouched && m.End > m.Start
}

// plausible bounds a duration field: kube-proxy validates its periods as non-negative, and none is
// longer than a day in practice (the longest default is 1h).
func plausible(d int64) bool { return d >= 0 && d <= int64(1000*time.Hour) }

// validate checks the runner signature at addr and reads its values.
func validate(t Target, addr uint64) (Found, bool) {
	l := t.Layout
	if l.Check() != nil {
		return Found{}, false
	}
	r := make([]byte, l.RunnerSize)
	if t.Mem.ReadMem(r, addr) != nil {
		return Found{}, false
	}
	le := binary.LittleEndian
	word := func(off uint64) uint64 { return le.Uint64(r[off:]) }
	f := Found{Address: addr, MinInterval: time.Duration(word(l.MinInterval)), MaxInterval: time.Duration(word(l.MaxInterval))}
	if !plausible(int64(f.MinInterval)) || !plausible(int64(f.MaxInterval)) || f.MaxInterval == 0 || f.MaxInterval < f.MinInterval {
		return Found{}, false
	}
	if word(l.Fn) == 0 || !runChannel(t.Mem, word(l.Run)) {
		return Found{}, false
	}
	if l.Generation == layout.Runner {
		f.RetryInterval = time.Duration(word(l.RetryInterval))
		if f.RetryInterval <= 0 || !plausible(int64(f.RetryInterval)) {
			return Found{}, false
		}
		f.Patchable = true
		return f, true
	}
	return limiter(t, f, word(l.Limiter), word(l.Limiter+8))
}

// runChannel checks that p is the runner's `run` channel: make(chan struct{}, 1), so its hchan has
// qcount ≤ 1, dataqsiz 1 and elemsize 0 (hchan: qcount, dataqsiz, buf, elemsize uint16, ...).
func runChannel(mem memory.Reader, p uint64) bool {
	if p == 0 {
		return false
	}
	var h [26]byte
	if mem.ReadMem(h[:], p) != nil {
		return false
	}
	le := binary.LittleEndian
	return le.Uint64(h[0:]) <= 1 && le.Uint64(h[8:]) == 1 && le.Uint16(h[24:]) == 0
}

// limiter follows the old generation's rateLimiter interface (itab, data) to the token bucket.
func limiter(t Target, f Found, tab, data uint64) (Found, bool) {
	if tab == 0 {
		return Found{}, false
	}
	var itab [16]byte
	if t.Mem.ReadMem(itab[:], tab) != nil {
		return Found{}, false
	}
	le := binary.LittleEndian
	typ := le.Uint64(itab[8:]) - t.Bias // the dynamic type's descriptor, in the file's image
	name, err := t.Binary.TypeName(typ)
	if err != nil {
		return Found{}, false
	}
	switch name {
	case "async.nullLimiter":
		if f.MinInterval != 0 {
			return Found{}, false
		}
		f.Reason = "started with a minimum sync period of 0: its limiter is a no-op with no rate to retune; restart it once with a non-zero period"
		return f, true
	case "*flowcontrol.tokenBucketRateLimiter":
	default:
		return Found{}, false
	}
	var tb [16]byte
	if data == 0 || t.Mem.ReadMem(tb[:], data+t.Layout.TBLimiter) != nil {
		return Found{}, false
	}
	rl := le.Uint64(tb[:])
	var qps [4]byte
	if t.Mem.ReadMem(qps[:], data+t.Layout.TBQPS) != nil {
		return Found{}, false
	}
	f.QPS = math.Float32frombits(le.Uint32(qps[:]))
	f.QPSAddr = data + t.Layout.TBQPS
	var lim [8]byte
	var burst [8]byte
	if rl == 0 || t.Mem.ReadMem(lim[:], rl+t.Layout.RateLimit) != nil || t.Mem.ReadMem(burst[:], rl+t.Layout.RateBurst) != nil {
		return Found{}, false
	}
	f.Limit = math.Float64frombits(le.Uint64(lim[:]))
	f.Burst = int64(le.Uint64(burst[:]))
	f.LimitAddr = rl
	if f.Limit != float64(f.QPS) || f.Burst < 1 || f.Burst > 1<<20 || f.QPS <= 0 {
		return Found{}, false
	}
	f.Patchable = true
	if want := QPSFor(f.MinInterval); f.QPS != want {
		f.Reason = fmt.Sprintf("qps %v does not match minInterval %v (want %v): changed by something other than a restart", f.QPS, f.MinInterval, want)
	}
	return f, true
}

// Validate checks the runner signature at addr, found by other means than the scan (a uprobe's
// capture), and reads its values: the scan's checks, plus a name that reads "sync-runner".
func Validate(t Target, addr uint64) (Found, bool) {
	var hdr [16]byte
	name := make([]byte, len(RunnerName))
	if t.Mem.ReadMem(hdr[:], addr+t.Layout.Name) != nil {
		return Found{}, false
	}
	le := binary.LittleEndian
	if le.Uint64(hdr[8:]) != uint64(len(RunnerName)) || t.Mem.ReadMem(name, le.Uint64(hdr[:])) != nil || string(name) != RunnerName {
		return Found{}, false
	}
	return validate(t, addr)
}

// QPSFor is what the old generation's constructor computes for a period:
// float32(time.Second) / float32(minInterval).
func QPSFor(d time.Duration) float32 { return float32(time.Second) / float32(d) }

// ErrStale is wrapped when a runner no longer holds what it held when it was read.
var ErrStale = errors.New("changed since it was read")

// Revalidate checks that the runner found earlier is still at its address with the same signature
// and the same values.
func Revalidate(t Target, f Found) error {
	got, ok := validate(t, f.Address)
	if !ok {
		return fmt.Errorf("runner %#x no longer has a runner's signature: %w", f.Address, ErrStale)
	}
	if got != f {
		return fmt.Errorf("runner %#x %w (min %v → %v, qps %v → %v, burst %d → %d)",
			f.Address, ErrStale, f.MinInterval, got.MinInterval, f.QPS, got.QPS, f.Burst, got.Burst)
	}
	return nil
}
