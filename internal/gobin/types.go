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

// What kptune reads of the runtime's type descriptors (internal/abi), the same from Go 1.19 to
// 1.26 but for the struct field offset's encoding (readStruct).
const (
	kindMask         = 0x1f   // abi.Type.Kind_ & kindMask is the kind
	kindStruct       = 25     // abi.Struct
	tflagExtraStar   = 1 << 1 // abi.TFlagExtraStar: the type's string has a leading '*' to skip
	nameFlagEmbedded = 1 << 3 // an abi.Name's flag byte: the struct field is embedded
	nameFlagsBelow   = 1 << 4 // every flag of an abi.Name's first byte is below this
	maxFields        = 1024   // a struct's fields, at most: kube-proxy's runner has a dozen
	maxName          = 1 << 12
)

// abiLayout is where the fields kptune reads sit in the descriptors, for pointers of ptr bytes.
type abiLayout struct {
	typeSize     int // sizeof(abi.Type): Size_, PtrBytes, Hash, TFlag, Align_, FieldAlign_, Kind_, Equal, GCData, Str, PtrToThis
	tflag        int // abi.Type.TFlag
	kind         int // abi.Type.Kind_
	str          int // abi.Type.Str, an int32 offset from moduledata.types to the type's string
	structPkg    int // abi.StructType.PkgPath, right after its abi.Type
	structFields int // abi.StructType.Fields: the slice's pointer, then its length
	structSize   int // sizeof(abi.StructType)
	fieldSize    int // sizeof(abi.StructField): Name, Typ, Offset
}

func (b *Binary) abi() abiLayout {
	p := b.PtrSize
	return abiLayout{typeSize: 4*p + 16, tflag: 2*p + 4, kind: 2*p + 7, str: 4*p + 8,
		structPkg: 4*p + 16, structFields: 5*p + 16, structSize: 8*p + 16, fieldSize: 3 * p}
}

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
	abi := b.abi()
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
			off := pos - abi.str
			if off < 0 || off%b.PtrSize != 0 || off+abi.structSize > len(b.types) || b.types[off+abi.kind]&kindMask != kindStruct {
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
		if pos > 0 && b.types[pos-1] < nameFlagsBelow {
			out = append(out, int64(pos-1))
		}
		i = pos + 1
	}
}

// readStruct reads an abi.StructType at addr.
func (b *Binary) readStruct(addr uint64) (Struct, error) {
	abi := b.abi()
	buf := make([]byte, abi.structSize)
	if err := b.ReadAt(buf, addr); err != nil {
		return Struct{}, err
	}
	size := b.word(buf)
	pkgPath, err := b.readName(b.word(buf[abi.structPkg:]))
	if err != nil {
		return Struct{}, fmt.Errorf("struct at %#x: package path: %w", addr, err)
	}
	fieldsPtr, nfields := b.word(buf[abi.structFields:]), b.word(buf[abi.structFields+b.PtrSize:])
	if nfields > maxFields {
		return Struct{}, fmt.Errorf("struct at %#x: %d fields", addr, nfields)
	}
	s := Struct{PkgPath: pkgPath, Size: size}
	fsz := abi.fieldSize
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
		embedded := flags&nameFlagEmbedded != 0
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
	abi := b.abi()
	buf := make([]byte, abi.typeSize)
	if err := b.ReadAt(buf, addr); err != nil {
		return "", 0, err
	}
	str := uint64(b.Order.Uint32(buf[abi.str:]))
	name, _, err := b.readNameFlags(b.Types + str)
	if err != nil {
		return "", 0, err
	}
	if buf[abi.tflag]&tflagExtraStar != 0 && len(name) > 0 {
		name = name[1:]
	}
	return name, b.word(buf), nil
}

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
	if k <= 0 || n > maxName {
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
