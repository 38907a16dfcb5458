package locate_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// segments is a sparse memory image: the places a scan read, each at its address. Encoded for the
// fuzzer as records of (address uint64, length uint16, bytes).
type segments []segment

type segment struct {
	addr uint64
	data []byte
}

func (s segments) ReadMem(p []byte, addr uint64) error {
	for _, g := range s {
		if addr >= g.addr && addr-g.addr <= uint64(len(g.data)) && uint64(len(p)) <= uint64(len(g.data))-(addr-g.addr) {
			copy(p, g.data[addr-g.addr:])
			return nil
		}
	}
	return fmt.Errorf("read %d bytes at %#x: not in the image", len(p), addr)
}

func (s segments) encode() []byte {
	var out []byte
	for _, g := range s {
		out = binary.LittleEndian.AppendUint64(out, g.addr)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(g.data)))
		out = append(out, g.data...)
	}
	return out
}

func decode(b []byte) segments {
	var s segments
	for len(b) >= 10 {
		addr, n := binary.LittleEndian.Uint64(b), int(binary.LittleEndian.Uint16(b[8:]))
		b = b[10:]
		n = min(n, len(b))
		s = append(s, segment{addr, b[:n]})
		b = b[n:]
	}
	return s
}

// recorder keeps what a live read returned.
type recorder struct {
	mem  memory.Reader
	seen segments
}

func (r *recorder) ReadMem(p []byte, addr uint64) error {
	if err := r.mem.ReadMem(p, addr); err != nil {
		return err
	}
	r.seen = append(r.seen, segment{addr, bytes.Clone(p)})
	return nil
}

// FuzzValidate: over any memory image, the scan, the runner validator, the uprobe's validator and
// the layout-from-values search return, without panic, only runners that validate again on the same
// image. The seed is what validating a live async runner (k8s 1.33.5, the fixture) actually read: the
// runner, its run channel, its limiter's itab, token bucket and rate.Limiter, and its name.
func FuzzValidate(f *testing.F) {
	testbed.NeedBuilds(f)
	ctx := context.Background()
	path, err := testbed.Build{Version: "v1.33.5"}.Fixture(ctx, testbed.AsyncRunner)
	if err != nil {
		f.Fatal(err)
	}
	bin, err := gobin.Open(path)
	if err != nil {
		f.Fatal(err)
	}
	layout, err := layout.Of(bin)
	if err != nil {
		f.Fatal(err)
	}
	if os.Geteuid() == 0 {
		fx, err := testbed.StartFixture(ctx, path, "-min-sync-period", "1300ms")
		if err != nil {
			f.Fatal(err)
		}
		tg, err := locate.TargetOf(fx.PID, bin)
		if err != nil {
			f.Fatal(err)
		}
		found, err := locate.Scan(context.Background(), tg)
		if err != nil || len(found) != 1 {
			f.Fatalf("scan of the live fixture: %v, %v", found, err)
		}
		rec := &recorder{mem: tg.Mem}
		tg.Mem = rec
		if _, ok := locate.Validate(tg, found[0].Address); !ok {
			f.Fatal("the live runner does not validate through the recorder")
		}
		fx.Stop()
		sort.Slice(rec.seen, func(i, j int) bool { return rec.seen[i].addr < rec.seen[j].addr })
		seed := rec.seen.encode()
		if got, ok := locate.Validate(locate.Target{Mem: decode(seed), Binary: bin, Layout: layout}, found[0].Address); !ok || got != found[0] {
			f.Fatalf("the recorded image does not validate: %+v", got)
		}
		f.Add(seed, found[0].Address)
	}
	f.Add([]byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, image []byte, addr uint64) {
		segs := decode(image)
		tg := scanAndValidate(t, segs, bin, layout, addr)
		obs := make(locate.Observation, 256)
		if segs.ReadMem(obs, addr) == nil {
			_, _ = locate.LayoutFromValues(tg, addr, obs, obs, locate.Periods{MinSync: 1300 * time.Millisecond, Sync: 30 * time.Second})
		}
	})
}

// FuzzLayout: a layout read from a fuzzed binary (the async runner fixture with a patch spliced into
// its type descriptors, where a crafted kube-proxy declares what it likes) is refused, or bounded:
// the scan and the validator over any memory image neither panic nor allocate what it claims, and
// what they return validates again.
func FuzzLayout(f *testing.F) {
	testbed.NeedBuilds(f)
	path, err := testbed.Build{Version: "v1.33.5"}.Fixture(context.Background(), testbed.AsyncRunner)
	if err != nil {
		f.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	bin, err := gobin.New(bytes.NewReader(orig))
	if err != nil {
		f.Fatal(err)
	}
	for _, st := range [][2]string{{"async.BoundedFrequencyRunner", layout.AsyncPkg}, {"flowcontrol.tokenBucketRateLimiter", layout.FlowcontrolPkg},
		{"flowcontrol.tokenBucketPassiveRateLimiter", layout.FlowcontrolPkg}, {"rate.Limiter", layout.RatePkg}} {
		s, err := bin.StructType(st[0], st[1])
		if err != nil {
			f.Fatal(err)
		}
		off, err := bin.FileOffsetData(s.Addr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(binary.LittleEndian.AppendUint64(nil, 1<<49), uint32(off), []byte{}, uint64(0)) // its size
		f.Add(orig[off:off+64], uint32(off), []byte{}, uint64(0))
	}
	f.Fuzz(func(t *testing.T, patch []byte, at uint32, image []byte, addr uint64) {
		data := bytes.Clone(orig)
		copy(data[int(at)%len(data):], patch)
		b, err := gobin.New(bytes.NewReader(data))
		if err != nil {
			return
		}
		l, err := layout.Of(b)
		if err != nil {
			return
		}
		if err := l.Check(); err != nil {
			t.Fatalf("layout.Of returned a layout that fails its check: %v (%+v)", err, l)
		}
		scanAndValidate(t, decode(image), b, l, addr)
	})
}

// scanAndValidate scans the image and validates addr in it: what either returns must validate again.
func scanAndValidate(t *testing.T, segs segments, b *gobin.Binary, l layout.Layout, addr uint64) locate.Target {
	tg := locate.Target{Mem: segs, Binary: b, Layout: l}
	for _, g := range segs {
		if len(g.data) > 0 && g.addr+uint64(len(g.data)) > g.addr {
			tg.Maps = append(tg.Maps, procfs.Mapping{Start: g.addr, End: g.addr + uint64(len(g.data)), Perms: "rw-p"})
		}
	}
	found, err := locate.Scan(context.Background(), tg)
	if err != nil && !errors.Is(err, memory.ErrExited) {
		found = nil
	}
	for _, fd := range found {
		if err := locate.Revalidate(tg, fd); err != nil {
			t.Fatalf("the scan returned %+v, which does not validate again: %v", fd, err)
		}
	}
	if fd, ok := locate.Validate(tg, addr); ok {
		if err := locate.Revalidate(tg, fd); err != nil {
			t.Fatalf("Validate returned %+v, which does not validate again: %v", fd, err)
		}
	}
	return tg
}
