package gobin

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"kptune/test/testbed"
)

const (
	asyncPkg    = "k8s.io/kubernetes/pkg/util/async"
	runnerPkg   = "k8s.io/kubernetes/pkg/proxy/runner"
	tryRun      = asyncPkg + ".(*BoundedFrequencyRunner).tryRun"
	newLoop     = runnerPkg + ".(*BoundedFrequencyRunner).Loop"
	flowcontrol = "k8s.io/client-go/util/flowcontrol"
	ratePkg     = "golang.org/x/time/rate"
)

type fixture struct {
	build   testbed.Build
	name    string
	has     string // a function the generation has
	hasNot  string // one it does not
	structs [][2]string
}

var oldStructs = [][2]string{
	{"async.BoundedFrequencyRunner", asyncPkg},
	{"flowcontrol.tokenBucketRateLimiter", flowcontrol},
	{"flowcontrol.tokenBucketPassiveRateLimiter", flowcontrol},
	{"rate.Limiter", ratePkg},
}

var fixtures = []fixture{
	{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, tryRun, newLoop, oldStructs},
	{testbed.Build{Version: "v1.33.5", PIE: true}, testbed.AsyncRunner, tryRun, newLoop, oldStructs},
	{testbed.Build{Version: "v1.33.5", CGO: true}, testbed.AsyncRunner, tryRun, newLoop, oldStructs},
	{testbed.Build{Version: "v1.37.2"}, testbed.ProxyRunner, newLoop, tryRun, [][2]string{{"runner.BoundedFrequencyRunner", runnerPkg}}},
}

func open(t *testing.T, b testbed.Build, name string) *Binary {
	t.Helper()
	path, err := b.Fixture(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bin.Close() })
	return bin
}

// TestStrippedBuilds analyses stripped fixtures of both generations (static, PIE, externally linked
// cgo) and checks each against the unstripped build of the same source: the function addresses
// from the pclntab against the ELF symbols, the struct layouts from type descriptors against DWARF.
func TestStrippedBuilds(t *testing.T) {
	testbed.NeedBuilds(t)
	for _, fx := range fixtures {
		t.Run(fx.build.String(), func(t *testing.T) {
			bin := open(t, fx.build, fx.name)
			if !strings.HasPrefix(bin.GoVersion, "go1.") || bin.BuildID() == "" {
				t.Errorf("Go version %q, build id %q", bin.GoVersion, bin.BuildID())
			}
			if bin.PIE != fx.build.PIE {
				t.Errorf("PIE = %v", bin.PIE)
			}
			if _, _, ok := bin.Func(fx.has); !ok {
				t.Errorf("no function %s", fx.has)
			}
			if _, _, ok := bin.Func(fx.hasNot); ok {
				t.Errorf("function %s found in the other generation", fx.hasNot)
			}

			dbgBuild := fx.build
			dbgBuild.Debug = true
			dbg := open(t, dbgBuild, fx.name)
			if syms, err := dbg.ELF.Symbols(); err != nil {
				t.Fatalf("the debug build has no symbols: %v", err)
			} else {
				checkSymbols(t, dbg, syms, fx.has)
			}
			if _, err := bin.ELF.Symbols(); err == nil {
				t.Errorf("the release build kept its symbol table")
			}
			for _, st := range fx.structs {
				got, err := bin.StructType(st[0], st[1])
				if err != nil {
					t.Fatalf("%s: %v", st[0], err)
				}
				if _, err := bin.DWARFStruct(st[0], st[1]); !errors.Is(err, ErrNoDWARF) {
					t.Errorf("DWARF of the stripped build: got %v, want ErrNoDWARF", err)
				}
				want, err := dbg.DWARFStruct(st[0], st[1])
				if err != nil {
					t.Fatalf("%s: %v", st[0], err)
				}
				if !sameLayout(got, want) {
					t.Errorf("%s from type descriptors:\n %+v\nfrom DWARF:\n %+v", st[0], got, want)
				}
				if got2, err := dbg.StructType(st[0], st[1]); err != nil || !reflect.DeepEqual(got.Fields, got2.Fields) || got.Size != got2.Size {
					t.Errorf("%s: stripped and debug type descriptors differ: %+v vs %+v (%v)", st[0], got, got2, err)
				}
			}
		})
	}
}

func checkSymbols(t *testing.T, b *Binary, syms []elf.Symbol, fn string) {
	t.Helper()
	found := 0
	for _, s := range syms {
		switch s.Name {
		case "runtime.text":
			found++
			if s.Value != b.Text {
				t.Errorf("moduledata.text %#x, runtime.text symbol %#x", b.Text, s.Value)
			}
		case fn:
			found++
			if entry, _, _ := b.Func(fn); entry != s.Value {
				t.Errorf("%s: pclntab entry %#x, symbol %#x", fn, entry, s.Value)
			}
		}
	}
	if found != 2 {
		t.Errorf("found %d of runtime.text and %s in the symbol table", found, fn)
	}
}

// sameLayout compares names, offsets and sizes (type strings differ in form between the two).
func sameLayout(a, b Struct) bool {
	if a.Size != b.Size || len(a.Fields) != len(b.Fields) {
		return false
	}
	for i := range a.Fields {
		fa, fb := a.Fields[i], b.Fields[i]
		if fa.Name != fb.Name || fa.Offset != fb.Offset || fa.Size != fb.Size {
			return false
		}
	}
	return true
}

func TestBadInput(t *testing.T) {
	testbed.NeedBuilds(t)
	good, err := testbed.Build{Version: "v1.33.5"}.Fixture(context.Background(), testbed.AsyncRunner)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "parse ELF file"},
		{"garbage", bytes.Repeat([]byte("kptune"), 1000), "parse ELF file"},
		{"truncated header", data[:40], "parse ELF file"},
		{"truncated", data[:len(data)/3], ""},
	} {
		_, err := New(bytes.NewReader(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := Open("/bin/true"); !errors.Is(err, ErrNotGo) {
		t.Errorf("/bin/true: got %v, want ErrNotGo", err)
	}
	if _, err := Open("/nonexistent/kube-proxy"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
}

// TestRelocationOffsetNear2to64: a PIE executable whose relocation section holds an entry at an
// offset near 2^64 is read without a panic (the offset plus a word wrapped, and the entry was
// applied far outside the buffer), and the entry is not applied.
func TestRelocationOffsetNear2to64(t *testing.T) {
	testbed.NeedBuilds(t)
	path, err := testbed.Build{Version: "v1.33.5", PIE: true}.Fixture(context.Background(), testbed.AsyncRunner)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var rela *elf.Section
	for _, s := range ef.Sections {
		if s.Type == elf.SHT_RELA && s.Size >= 48 {
			rela = s
			break
		}
	}
	if rela == nil {
		t.Fatal("the PIE fixture has no relocation section")
	}
	// The entry with the highest offset: after sorting it is the last, reached by any read that
	// covers the highest real one. The next highest still applies.
	best, bestOff, next, nextAddend := -1, uint64(0), uint64(0), uint64(0)
	for i := uint64(0); i+24 <= rela.Size; i += 24 {
		at := rela.Offset + i
		if uint32(ef.ByteOrder.Uint64(data[at+8:])) != uint32(elf.R_X86_64_RELATIVE) {
			continue
		}
		off := ef.ByteOrder.Uint64(data[at:])
		if off >= bestOff {
			if best >= 0 {
				next, nextAddend = bestOff, ef.ByteOrder.Uint64(data[best+16:])
			}
			best, bestOff = int(at), off
		} else if off > next {
			next, nextAddend = off, ef.ByteOrder.Uint64(data[at+16:])
		}
	}
	if best < 0 || next == 0 {
		t.Fatal("fewer than two R_X86_64_RELATIVE entries")
	}
	ef.ByteOrder.PutUint64(data[best:], 1<<64-4)
	b, err := New(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the binary with one wild relocation is refused: %v", err)
	}
	for _, p := range b.ELF.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz > 256<<20 {
			continue
		}
		buf := make([]byte, p.Memsz)
		if err := b.ReadAt(buf, p.Vaddr); err != nil {
			t.Errorf("read segment %#x: %v", p.Vaddr, err)
		}
	}
	var w [8]byte
	if err := b.ReadAt(w[:], next); err != nil {
		t.Fatal(err)
	}
	if got := b.Order.Uint64(w[:]); got != nextAddend {
		t.Errorf("the word at %#x reads %#x, want its relocation's addend %#x", next, got, nextAddend)
	}
}
