package gobin

import (
	"debug/elf"
	"errors"
	"fmt"
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
		// Its first word points at the pclntab header.
		for _, s := range b.ELF.Sections {
			if s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_WRITE == 0 || s.Type == elf.SHT_NOBITS {
				continue
			}
			data, err := s.Data()
			if err != nil {
				continue
			}
			b.applyRelocs(data, s.Addr)
			for off := 0; off+b.PtrSize <= len(data); off += b.PtrSize {
				if b.word(data[off:]) == pclnAddr {
					candidates = append(candidates, s.Addr+uint64(off))
				}
			}
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
	r := b.relocs
	i := sort.Search(len(r), func(i int) bool { return r[i].off >= addr })
	for ; i < len(r) && r[i].off+8 <= addr+uint64(len(p)); i++ {
		b.Order.PutUint64(p[r[i].off-addr:], r[i].addend)
	}
}

type reloc struct{ off, addend uint64 }

func (b *Binary) loadRelocs() []reloc {
	out := []reloc{}
	for _, s := range b.ELF.Sections {
		if s.Type != elf.SHT_RELA {
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
