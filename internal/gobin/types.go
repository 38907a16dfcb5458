package gobin

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Struct is a struct type's layout as the compiler laid it out.
type Struct struct {
	Name    string // "async.BoundedFrequencyRunner"
	PkgPath string // "k8s.io/kubernetes/pkg/util/async"
	Size    uint64
	Fields  []Field
	Addr    uint64 // the type descriptor's address in the file's image (0 from DWARF)
}

// Field is one field of a Struct.
type Field struct {
	Name     string
	Type     string // the field type's string form: "time.Duration", "*rate.Limiter"
	Offset   uint64
	Size     uint64
	Embedded bool
}

// Field returns the named field.
func (s Struct) Field(name string) (Field, bool) {
	for _, f := range s.Fields {
		if f.Name == name {
			return f, true
		}
	}
	return Field{}, false
}

// ErrTypeNotFound is returned when the binary has no descriptor for a type.
var ErrTypeNotFound = errors.New("type descriptor not found")

// Runtime type descriptor (internal/abi.Type) layout, in pointer-size units where it scales.
const (
	kindMask   = 0x1f
	kindStruct = 25
)

// typeHeaderSize is sizeof(abi.Type): size, ptrdata, hash+tflag+align+fieldAlign+kind, equal,
// gcdata, str+ptrToThis.
func (b *Binary) typeHeaderSize() int { return 4*b.PtrSize + 8 + 8 }

func (b *Binary) loadTypes() error {
	if b.types != nil {
		return nil
	}
	// Allocate only what the file's image holds: a corrupt moduledata must not ask for terabytes.
	if b.ETypes < b.Types || !b.inFile(b.Types, b.ETypes-b.Types) {
		return fmt.Errorf("read type descriptors: [%#x, %#x) is not in the file's image", b.Types, b.ETypes)
	}
	if b.ETypes-b.Types > MaxRead {
		return fmt.Errorf("read type descriptors: %d MiB, more than any kube-proxy has", (b.ETypes-b.Types)>>20)
	}
	types := make([]byte, b.ETypes-b.Types)
	if err := b.ReadAt(types, b.Types); err != nil {
		return fmt.Errorf("read type descriptors: %w", err)
	}
	b.types = types
	return nil
}

// ReleaseTypes drops the type descriptors read for HasTypeName and StructType (several MiB in a
// kube-proxy): a long-running reader keeps only what it uses; they are read again if asked for.
func (b *Binary) ReleaseTypes() { b.types = nil }

// HasTypeName reports whether the binary has a type descriptor string "*"+name, which every named
// type has whose pointer type exists (any type with pointer methods).
func (b *Binary) HasTypeName(name string) (bool, error) {
	if err := b.loadTypes(); err != nil {
		return false, err
	}
	return len(b.findNames("*"+name)) > 0, nil
}

// StructType reads the layout of the named struct type ("async.BoundedFrequencyRunner") of package
// pkgPath from the binary's runtime type descriptors, which stripped binaries keep for reflection,
// interface conversions and the garbage collector.
func (b *Binary) StructType(name, pkgPath string) (Struct, error) {
	if err := b.loadTypes(); err != nil {
		return Struct{}, err
	}
	// A named type's string is stored once as "*pkg.Name", flagged so that the type itself skips
	// the star; the pointer type shares it.
	nameOffs := b.findNames("*" + name)
	if len(nameOffs) == 0 {
		return Struct{}, fmt.Errorf("%w: no name %q", ErrTypeNotFound, name)
	}
	var errs []error
	hdr := b.typeHeaderSize()
	strAt := 4*b.PtrSize + 8 // offset of abi.Type.Str
	for _, nameOff := range nameOffs {
		// A descriptor whose Str is nameOff: search for the 4 bytes (vectorised), then check that
		// they sit where Str sits in an aligned descriptor of kind struct.
		needle := make([]byte, 4)
		b.Order.PutUint32(needle, uint32(nameOff))
		for i := 0; ; {
			j := bytes.Index(b.types[i:], needle)
			if j < 0 {
				break
			}
			pos := i + j
			i = pos + 1
			off := pos - strAt
			if off < 0 || off%b.PtrSize != 0 || off+hdr+4*b.PtrSize > len(b.types) || b.types[off+2*b.PtrSize+7]&kindMask != kindStruct {
				continue
			}
			s, err := b.readStruct(b.Types + uint64(off))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if s.PkgPath != pkgPath {
				errs = append(errs, fmt.Errorf("%s at %#x is of package %q", name, b.Types+uint64(off), s.PkgPath))
				continue
			}
			s.Name, s.Addr = name, b.Types+uint64(off)
			return s, nil
		}
	}
	if len(errs) > 0 {
		return Struct{}, fmt.Errorf("%w: %s of %s: %w", ErrTypeNotFound, name, pkgPath, errors.Join(errs...))
	}
	return Struct{}, fmt.Errorf("%w: %s of %s", ErrTypeNotFound, name, pkgPath)
}

// findNames returns the offsets, relative to moduledata.types, of encoded names (a flag byte, a
// varint length, the bytes) equal to s.
func (b *Binary) findNames(s string) []int64 {
	var lenbuf [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(lenbuf[:], uint64(len(s)))
	needle := append(lenbuf[:n:n], s...)
	var out []int64
	for i := 0; ; {
		j := bytes.Index(b.types[i:], needle)
		if j < 0 {
			return out
		}
		pos := i + j
		if pos > 0 && b.types[pos-1] < 1<<4 {
			out = append(out, int64(pos-1))
		}
		i = pos + 1
	}
}

// readStruct reads an abi.StructType at addr.
func (b *Binary) readStruct(addr uint64) (Struct, error) {
	hdr := b.typeHeaderSize()
	buf := make([]byte, hdr+4*b.PtrSize)
	if err := b.ReadAt(buf, addr); err != nil {
		return Struct{}, err
	}
	size := b.word(buf)
	pkgPath, err := b.readName(b.word(buf[hdr:]))
	if err != nil {
		return Struct{}, fmt.Errorf("struct at %#x: package path: %w", addr, err)
	}
	fieldsPtr, nfields := b.word(buf[hdr+b.PtrSize:]), b.word(buf[hdr+2*b.PtrSize:])
	if nfields > 1024 {
		return Struct{}, fmt.Errorf("struct at %#x: %d fields", addr, nfields)
	}
	s := Struct{PkgPath: pkgPath, Size: size}
	fsz := 3 * b.PtrSize
	fields := make([]byte, int(nfields)*fsz)
	if err := b.ReadAt(fields, fieldsPtr); err != nil {
		return Struct{}, fmt.Errorf("struct at %#x: fields: %w", addr, err)
	}
	for i := 0; i < int(nfields); i++ {
		f := fields[i*fsz:]
		nameAddr, typAddr, off := b.word(f), b.word(f[b.PtrSize:]), b.word(f[2*b.PtrSize:])
		name, flags, err := b.readNameFlags(nameAddr)
		if err != nil {
			return Struct{}, fmt.Errorf("struct at %#x: field %d: %w", addr, i, err)
		}
		embedded := flags&(1<<3) != 0
		if b.GoMinor < 19 {
			// Before Go 1.19 the word held offset<<1 | embedded.
			embedded, off = off&1 != 0, off>>1
		}
		typ, tsize, err := b.typeString(typAddr)
		if err != nil {
			return Struct{}, fmt.Errorf("struct at %#x: field %s: %w", addr, name, err)
		}
		if off > size || tsize > size-off {
			return Struct{}, fmt.Errorf("struct at %#x: field %s at %d (%d bytes) overruns its %d bytes", addr, name, off, tsize, size)
		}
		s.Fields = append(s.Fields, Field{Name: name, Type: typ, Offset: off, Size: tsize, Embedded: embedded})
	}
	return s, nil
}

// typeString reads the string form and size of the type descriptor at addr.
func (b *Binary) typeString(addr uint64) (string, uint64, error) {
	buf := make([]byte, b.typeHeaderSize())
	if err := b.ReadAt(buf, addr); err != nil {
		return "", 0, err
	}
	str := uint64(b.Order.Uint32(buf[4*b.PtrSize+8:]))
	name, _, err := b.readNameFlags(b.Types + str)
	if err != nil {
		return "", 0, err
	}
	if buf[2*b.PtrSize+4]&tflagExtraStar != 0 && len(name) > 0 {
		name = name[1:]
	}
	return name, b.word(buf), nil
}

const tflagExtraStar = 1 << 1

func (b *Binary) readName(addr uint64) (string, error) {
	if addr == 0 {
		return "", nil
	}
	s, _, err := b.readNameFlags(addr)
	return s, err
}

// readNameFlags decodes an abi.Name: a flag byte, a uvarint length, the bytes.
func (b *Binary) readNameFlags(addr uint64) (string, byte, error) {
	var hdr [1 + binary.MaxVarintLen16]byte
	if err := b.ReadAt(hdr[:], addr); err != nil {
		return "", 0, err
	}
	n, k := binary.Uvarint(hdr[1:])
	if k <= 0 || n > 1<<12 {
		return "", 0, fmt.Errorf("bad name at %#x", addr)
	}
	buf := make([]byte, n)
	if err := b.ReadAt(buf, addr+1+uint64(k)); err != nil {
		return "", 0, err
	}
	return string(buf), hdr[0], nil
}

// TypeName reads the string form of the type descriptor at addr (in the file's image).
func (b *Binary) TypeName(addr uint64) (string, error) {
	name, _, err := b.typeString(addr)
	return name, err
}
