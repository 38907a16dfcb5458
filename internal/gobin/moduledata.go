package gobin

import (
	"debug/elf"
	"errors"
	"fmt"
	"math"
	"sort"
)

// moduledata field offsets, in words, that kptune reads.
const (
	mdPCHeader = 0
	mdMinPC    = 20 // after pcHeader and six slices of three words, findfunctab
	mdMaxPC    = 21
	mdText     = 22
	mdEText    = 23
	// types and etypes: after noptrdata..enoptrbss (8 words), covctrs/ecovctrs (Go 1.20+),
	// end, gcdata, gcbss.
	mdTypes120 = 37
	mdTypes118 = 35
)

// findModuleData locates the runtime's moduledata and reads the text start and types range.
func (b *Binary) findModuleData(pclnAddr uint64) error {
	var candidates []uint64
	if s := b.ELF.Section(".go.module"); s != nil {
		candidates = append(candidates, s.Addr)
	} else {
		var err error
		if candidates, err = b.pointersTo(pclnAddr); err != nil {
			return err
		}
	}
	typesAt := mdTypes120
	if b.GoMinor < 20 {
		typesAt = mdTypes118
	}
	var errs []error
	for _, addr := range candidates {
		words := make([]byte, (typesAt+2)*b.PtrSize)
		if err := b.ReadAt(words, addr); err != nil {
			errs = append(errs, err)
			continue
		}
		w := func(i int) uint64 { return b.word(words[i*b.PtrSize:]) }
		text, etext, minpc, maxpc := w(mdText), w(mdEText), w(mdMinPC), w(mdMaxPC)
		types, etypes := w(typesAt), w(typesAt+1)
		switch {
		case w(mdPCHeader) != pclnAddr:
			errs = append(errs, fmt.Errorf("moduledata at %#x: first word %#x is not the pclntab %#x", addr, w(mdPCHeader), pclnAddr))
		case !(text <= minpc && minpc < maxpc && maxpc <= etext):
			errs = append(errs, fmt.Errorf("moduledata at %#x: text %#x..%#x does not hold pcs %#x..%#x", addr, text, etext, minpc, maxpc))
		case !(types < etypes) || b.section(types) == nil || b.section(etypes-1) == nil:
			errs = append(errs, fmt.Errorf("moduledata at %#x: types %#x..%#x is not in the image", addr, types, etypes))
		default:
			b.ModuleData, b.Text, b.Types, b.ETypes = addr, text, types, etypes
			return nil
		}
	}
	if len(errs) == 0 {
		return errors.New("no moduledata: nothing points at the pclntab (not a Go 1.18+ executable?)")
	}
	return fmt.Errorf("no valid moduledata: %w", errors.Join(errs...))
}

// pointersTo returns the addresses of the words of the file's writable data that hold addr (with
// relocations applied), where moduledata is looked for before Go 1.26. Sections are read a chunk at
// a time, and no more than MaxRead bytes in all: the file is untrusted and may claim any size.
func (b *Binary) pointersTo(addr uint64) ([]uint64, error) {
	var out []uint64
	budget := uint64(MaxRead)
	buf := make([]byte, chunk)
	for _, s := range b.ELF.Sections {
		if s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_WRITE == 0 || s.Type == elf.SHT_NOBITS {
			continue
		}
		if s.Size > budget {
			return nil, fmt.Errorf("writable data larger than %d MiB: not a Go executable kptune reads", MaxRead>>20)
		}
		budget -= s.Size
		for off := uint64(0); off < s.Size; off += chunk {
			p := buf[:min(chunk, s.Size-off)]
			if n, _ := s.ReadAt(p, int64(off)); n < len(p) {
				break // a truncated section cannot hold a valid moduledata past its end
			}
			b.applyRelocs(p, s.Addr+off)
			for i := 0; i+b.PtrSize <= len(p); i += b.PtrSize {
				if b.word(p[i:]) == addr {
					out = append(out, s.Addr+off+uint64(i))
				}
			}
		}
	}
	return out, nil
}

// applyRelocs fills in the R_*_RELATIVE relocations of a PIE executable over p, which holds the
// image at addr: the linker may leave the words zero in the file and keep the value only in the
// relocation's addend.
func (b *Binary) applyRelocs(p []byte, addr uint64) {
	if !b.PIE || b.PtrSize != 8 {
		return
	}
	if b.relocs == nil {
		b.relocs = b.loadRelocs()
	}
	// The offsets come from the file: the arithmetic must not wrap (an entry near 2^64 would
	// otherwise index far outside p).
	if len(p) < 8 || addr > math.MaxUint64-uint64(len(p)) {
		return
	}
	last := addr + uint64(len(p)) - 8 // the last place a word fits in p
	r := b.relocs
	i := sort.Search(len(r), func(i int) bool { return r[i].off >= addr })
	for ; i < len(r) && r[i].off <= last; i++ {
		b.Order.PutUint64(p[r[i].off-addr:], r[i].addend)
	}
}

type reloc struct{ off, addend uint64 }

func (b *Binary) loadRelocs() []reloc {
	out := []reloc{}
	for _, s := range b.ELF.Sections {
		if s.Type != elf.SHT_RELA || s.Size > MaxRead {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		for i := 0; i+24 <= len(data); i += 24 {
			info := b.Order.Uint64(data[i+8:])
			if typ := uint32(info); (b.ELF.Machine == elf.EM_X86_64 && elf.R_X86_64(typ) == elf.R_X86_64_RELATIVE) ||
				(b.ELF.Machine == elf.EM_AARCH64 && elf.R_AARCH64(typ) == elf.R_AARCH64_RELATIVE) {
				out = append(out, reloc{off: b.Order.Uint64(data[i:]), addend: b.Order.Uint64(data[i+16:])})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].off < out[j].off })
	return out
}
