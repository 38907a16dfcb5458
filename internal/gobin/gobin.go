// Package gobin analyses a Go executable without its symbols or debug information: what stripped
// (-s -w) release builds keep is enough. It reads the build information (debug/buildinfo), finds the
// runtime's moduledata, and through it the type descriptors and, when asked for, the function table
// (.gopclntab, read with debug/gosym).
//
// Format history that the code branches on:
//   - The pclntab header has held the text start since Go 1.18, but Go 1.26 writes 0 there, and
//     for externally linked (cgo) builds the .text section does not start at runtime.text. The
//     authoritative text start is moduledata.text.
//   - moduledata lives in its own section, .go.module, since Go 1.26; before, it is a symbol in
//     .noptrdata (or a relocated data section in PIE builds) found by its first word, the address of
//     the pclntab header.
//   - moduledata gained covctrs/ecovctrs in Go 1.20, which moved types/etypes by two words.
package gobin

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// ErrNotGo is returned for an executable without Go build information.
var ErrNotGo = errors.New("not a Go executable")

// Bounds on what is read of an executable. Everything in the file is untrusted (any process on a
// node can run a crafted one), so no size it claims is allocated or read past these.
const (
	// MaxExecutable is the largest executable analysed; kube-proxy is 40–80 MiB.
	MaxExecutable = 1 << 30
	// MaxRead bounds one section read whole, and all the writable data searched for moduledata;
	// kube-proxy's largest section, its function table, is 27 MiB.
	MaxRead = 256 << 20
	// chunk is how much of a section is held at once where it is searched.
	chunk = 1 << 20
)

// Binary is an analysed Go executable.
type Binary struct {
	Path      string
	ELF       *elf.File
	Build     *buildinfo.BuildInfo
	GoVersion string // "go1.26.8"
	GoMinor   int    // 26
	PtrSize   int
	Order     binary.ByteOrder
	PIE       bool // position independent: addresses are relative to the load bias

	// From moduledata.
	ModuleData uint64 // its address
	Text       uint64 // moduledata.text: what pclntab entry offsets are relative to
	Types      uint64 // moduledata.types: what type and name offsets are relative to
	ETypes     uint64

	table     *gosym.Table
	tableErr  error
	tableOnce sync.Once
	relocs    []reloc
	types     []byte // moduledata.types..etypes, read on first use
	close     io.Closer
}

// Open analyses the executable at path (for a live process, /proc/PID/exe).
func Open(path string) (*Binary, error) { return OpenVetted(path, nil) }

// OpenVetted analyses the executable at path if vet, called with its build information before
// anything else is read, accepts it: a process that is not wanted costs one small read.
func OpenVetted(path string, vet func(*buildinfo.BuildInfo) error) (*Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	b, err := newFile(f, vet)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b.Path, b.close = path, f
	return b, nil
}

func newFile(f *os.File, vet func(*buildinfo.BuildInfo) error) (*Binary, error) {
	st, err := f.Stat()
	switch {
	case err != nil:
		return nil, err
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	case st.Size() > MaxExecutable:
		return nil, fmt.Errorf("%d MiB: larger than any kube-proxy (%d MiB at most are read)", st.Size()>>20, MaxExecutable>>20)
	}
	return newVetted(f, vet)
}

// Close releases the file.
func (b *Binary) Close() error {
	if b.close != nil {
		return b.close.Close()
	}
	return nil
}

// New analyses an executable read through r.
func New(r io.ReaderAt) (*Binary, error) { return newVetted(r, nil) }

func newVetted(r io.ReaderAt, vet func(*buildinfo.BuildInfo) error) (*Binary, error) {
	bi, err := buildinfo.Read(r)
	if err != nil {
		if _, eerr := elf.NewFile(r); eerr != nil {
			return nil, fmt.Errorf("parse ELF file: %w", eerr)
		}
		return nil, fmt.Errorf("%w: %v", ErrNotGo, err)
	}
	if vet != nil {
		if err := vet(bi); err != nil {
			return nil, err
		}
	}
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("parse ELF file: %w", err)
	}
	b := &Binary{ELF: ef, Build: bi, GoVersion: bi.GoVersion, Order: ef.ByteOrder, PIE: ef.Type == elf.ET_DYN}
	b.GoMinor = goMinor(bi.GoVersion)
	if b.GoMinor == 0 {
		return nil, fmt.Errorf("unrecognised Go version %q in build information", bi.GoVersion)
	}
	if b.GoMinor < 18 {
		return nil, fmt.Errorf("built by %s: Go 1.18 or later is needed (pclntab format)", bi.GoVersion)
	}
	switch ef.Class {
	case elf.ELFCLASS64:
		b.PtrSize = 8
	case elf.ELFCLASS32:
		b.PtrSize = 4
	}

	pclnAddr, err := b.pclntabAddr()
	if err != nil {
		return nil, err
	}
	if err := b.findModuleData(pclnAddr); err != nil {
		return nil, err
	}
	return b, nil
}

func goMinor(v string) int {
	v = strings.TrimPrefix(v, "go")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 || parts[0] != "1" {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err != nil {
		return 0
	}
	return n
}

// pclntabSection returns the function table's section.
func (b *Binary) pclntabSection() (*elf.Section, error) {
	for _, name := range []string{".gopclntab", ".data.rel.ro.gopclntab"} {
		if s := b.ELF.Section(name); s != nil && s.Type != elf.SHT_NOBITS {
			return s, nil
		}
	}
	return nil, errors.New("no .gopclntab section: the function table is missing")
}

func (b *Binary) pclntabAddr() (uint64, error) {
	s, err := b.pclntabSection()
	if err != nil {
		return 0, err
	}
	return s.Addr, nil
}

// funcTable reads the function table on first use: it is the largest part of a binary (27 MiB for
// kube-proxy 1.33), and inspecting a process does not need it.
func (b *Binary) funcTable() (*gosym.Table, error) {
	b.tableOnce.Do(func() {
		s, err := b.pclntabSection()
		if err != nil {
			b.tableErr = err
			return
		}
		if s.Size > MaxRead {
			b.tableErr = fmt.Errorf("%s of %d MiB: larger than any kube-proxy's", s.Name, s.Size>>20)
			return
		}
		data, err := s.Data()
		if err != nil {
			b.tableErr = fmt.Errorf("read %s: %w", s.Name, err)
			return
		}
		tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, b.Text))
		switch {
		case err != nil:
			b.tableErr = fmt.Errorf("read function table: %w", err)
		case len(tab.Funcs) == 0:
			b.tableErr = errors.New("read function table: no functions")
		default:
			b.table = tab
		}
	})
	return b.table, b.tableErr
}

// Func returns the entry and end addresses (in the file's image) of the named function.
func (b *Binary) Func(name string) (entry, end uint64, ok bool) {
	tab, err := b.funcTable()
	if err != nil {
		return 0, 0, false
	}
	f := tab.LookupFunc(name)
	if f == nil {
		return 0, 0, false
	}
	return f.Entry, f.End, true
}

// FuncTableErr reports why the function table could not be read, if it could not.
func (b *Binary) FuncTableErr() error {
	_, err := b.funcTable()
	return err
}

// ReadAt reads len(p) bytes of the file's image at virtual address addr (unrelocated).
func (b *Binary) ReadAt(p []byte, addr uint64) error {
	for _, prog := range b.ELF.Progs {
		// In subtractions: the file's addresses and sizes may be chosen to wrap a sum.
		if prog.Type != elf.PT_LOAD || addr < prog.Vaddr || addr-prog.Vaddr > prog.Memsz || uint64(len(p)) > prog.Memsz-(addr-prog.Vaddr) {
			continue
		}
		off := addr - prog.Vaddr
		n := 0
		if off < prog.Filesz {
			end := min(off+uint64(len(p)), prog.Filesz)
			var err error
			n, err = prog.ReadAt(p[:end-off], int64(off))
			if err != nil && n < int(end-off) {
				return fmt.Errorf("read %#x: %w", addr, err)
			}
		}
		clear(p[n:]) // beyond the file: zero-initialised memory
		b.applyRelocs(p, addr)
		return nil
	}
	return fmt.Errorf("address %#x (%d bytes) is not in the executable's image", addr, len(p))
}

// inFile reports whether n bytes at addr lie in the file-backed part of one loaded segment.
func (b *Binary) inFile(addr, n uint64) bool {
	for _, prog := range b.ELF.Progs {
		if prog.Type == elf.PT_LOAD && addr >= prog.Vaddr && n <= prog.Filesz && addr-prog.Vaddr <= prog.Filesz-n {
			return true
		}
	}
	return false
}

// FileOffset converts the address of code (in the file's image) to its offset in the file, which is
// what the kernel's uprobes are placed by.
func (b *Binary) FileOffset(addr uint64) (uint64, error) {
	if off, ok := b.fileOffset(addr, elf.PF_X); ok {
		return off, nil
	}
	return 0, fmt.Errorf("address %#x is not in an executable segment of the file", addr)
}

// FileOffsetData converts the address of file-backed data (in the file's image) to its file offset.
func (b *Binary) FileOffsetData(addr uint64) (uint64, error) {
	if off, ok := b.fileOffset(addr, 0); ok {
		return off, nil
	}
	return 0, fmt.Errorf("address %#x is not file-backed", addr)
}

func (b *Binary) fileOffset(addr uint64, flags elf.ProgFlag) (uint64, bool) {
	for _, prog := range b.ELF.Progs {
		if prog.Type == elf.PT_LOAD && prog.Flags&flags == flags && addr >= prog.Vaddr && addr-prog.Vaddr < prog.Filesz {
			return addr - prog.Vaddr + prog.Off, true
		}
	}
	return 0, false
}

// Uint reads a pointer-sized word at addr.
func (b *Binary) Uint(addr uint64) (uint64, error) {
	buf := make([]byte, b.PtrSize)
	if err := b.ReadAt(buf, addr); err != nil {
		return 0, err
	}
	return b.word(buf), nil
}

func (b *Binary) word(p []byte) uint64 {
	if b.PtrSize == 4 {
		return uint64(b.Order.Uint32(p))
	}
	return b.Order.Uint64(p)
}

// section returns the section holding addr.
func (b *Binary) section(addr uint64) *elf.Section {
	for _, s := range b.ELF.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && addr >= s.Addr && addr-s.Addr < s.Size {
			return s
		}
	}
	return nil
}

// BuildID returns the Go build ID note, or "" if there is none.
func (b *Binary) BuildID() string {
	s := b.ELF.Section(".note.go.buildid")
	if s == nil {
		return ""
	}
	data, err := s.Data()
	if err != nil || len(data) < 16 {
		return ""
	}
	// An ELF note: namesz, descsz, type, "Go\x00\x00", desc.
	descsz := b.Order.Uint32(data[4:])
	if 16+int(descsz) > len(data) {
		return ""
	}
	return string(bytes.TrimRight(data[16:16+descsz], "\x00"))
}

// StringVars returns the values of the string variables initialised in the binary's data (string
// headers whose pointer leads into read-only data) that match: how a value set with the linker's
// -X flag is found without symbols.
func (b *Binary) StringVars(minLen, maxLen int, match func(string) bool) []string {
	var out []string
	seen := map[string]bool{}
	for _, name := range []string{".data", ".noptrdata", ".data.rel.ro"} {
		s := b.ELF.Section(name)
		if s == nil || s.Type == elf.SHT_NOBITS || s.Size > 64<<20 {
			continue
		}
		if !b.inFile(s.Addr, s.Size) {
			continue
		}
		data := make([]byte, s.Size)
		if err := b.ReadAt(data, s.Addr); err != nil {
			continue
		}
		for off := 0; off+2*b.PtrSize <= len(data); off += b.PtrSize {
			n := b.word(data[off+b.PtrSize:])
			if n < uint64(minLen) || n > uint64(maxLen) {
				continue
			}
			ptr := b.word(data[off:])
			sec := b.section(ptr)
			if sec == nil || sec.Flags&elf.SHF_WRITE != 0 || sec.Flags&elf.SHF_EXECINSTR != 0 {
				continue
			}
			buf := make([]byte, n)
			if b.ReadAt(buf, ptr) != nil {
				continue
			}
			if v := string(buf); !seen[v] && match(v) {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	return out
}
