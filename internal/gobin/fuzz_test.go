package gobin

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"testing"

	"kptune/test/testbed"
)

// FuzzNew: a real stripped Go build (the async runner fixture, static or PIE) with a fuzzed patch
// spliced in at a fuzzed place, over its ELF and section headers, build information, pclntab header,
// moduledata, type descriptors and (PIE) relocations, is analysed or refused with an error: no
// panic, no allocation beyond what the file holds, no hang. Truncations of the real file are seeds too.
func FuzzNew(f *testing.F) {
	testbed.NeedBuilds(f)
	var origs [2][]byte
	for i, pie := range []bool{false, true} {
		path, err := testbed.Build{Version: "v1.33.5", PIE: pie}.Fixture(context.Background(), testbed.AsyncRunner)
		if err != nil {
			f.Fatal(err)
		}
		orig, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		origs[i] = orig
		ef, err := elf.NewFile(bytes.NewReader(orig))
		if err != nil {
			f.Fatal(err)
		}
		b, err := New(bytes.NewReader(orig))
		if err != nil {
			f.Fatal(err)
		}
		places := []uint64{0, uint64(len(orig)) - 64*64} // the ELF header; the section headers at the end
		for _, name := range []string{".go.buildinfo", ".gopclntab", ".go.module", ".noptrdata", ".typelink", ".rela", ".rela.dyn"} {
			if s := ef.Section(name); s != nil {
				places = append(places, s.Offset)
			}
		}
		if off, err := b.FileOffsetData(b.Types); err == nil {
			places = append(places, off)
		}
		for _, p := range places {
			f.Add(orig[p:min(p+256, uint64(len(orig)))], uint32(p), uint32(0), pie)
		}
		f.Add([]byte{}, uint32(0), uint32(len(orig)/2), pie) // a truncation
		f.Add([]byte{}, uint32(0), uint32(4096), pie)
		if pie {
			// A relocation whose offset is near 2^64.
			if s := ef.Section(".rela"); s != nil {
				f.Add([]byte{0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint32(s.Offset+s.Size-24), uint32(0), pie)
			}
		}
	}
	f.Fuzz(func(t *testing.T, patch []byte, at, truncate uint32, pie bool) {
		orig := origs[0]
		if pie {
			orig = origs[1]
		}
		data := bytes.Clone(orig)
		if truncate > 0 {
			data = data[:int(truncate)%len(data)]
		}
		if len(data) > 0 {
			copy(data[int(at)%len(data):], patch)
		}
		b, err := New(bytes.NewReader(data))
		if err != nil {
			return
		}
		b.BuildID()
		b.StringVars(6, 60, func(string) bool { return true })
		if ok, err := b.HasTypeName("async.BoundedFrequencyRunner"); err == nil && ok {
			if s, err := b.StructType("async.BoundedFrequencyRunner", "k8s.io/kubernetes/pkg/util/async"); err == nil {
				for _, fl := range s.Fields {
					if fl.Offset > s.Size || fl.Size > s.Size-fl.Offset {
						t.Fatalf("field %s at %d (%d bytes) beyond the struct's %d bytes", fl.Name, fl.Offset, fl.Size, s.Size)
					}
				}
				_, _ = b.TypeName(s.Addr)
			}
		}
		_, _ = b.FileOffset(b.Text)
		// Reads across the image, with the (fuzzed) relocations applied.
		for _, p := range b.ELF.Progs {
			if p.Type == elf.PT_LOAD && p.Memsz > 0 {
				buf := make([]byte, min(p.Memsz, 1<<16))
				_ = b.ReadAt(buf, p.Vaddr+p.Memsz-uint64(len(buf)))
			}
		}
	})
}
