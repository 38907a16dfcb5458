package gobin

import (
	"debug/dwarf"
	"errors"
	"fmt"
	"strings"
)

// ErrNoDWARF is returned for binaries built without debug information (-w), as releases are.
var ErrNoDWARF = errors.New("no DWARF debug information")

// DWARFStruct reads the layout of the struct type pkgPath.Name from the binary's DWARF, the ground
// truth for unstripped builds.
func (b *Binary) DWARFStruct(name, pkgPath string) (Struct, error) {
	d, err := b.ELF.DWARF()
	if err != nil {
		return Struct{}, fmt.Errorf("%w: %v", ErrNoDWARF, err)
	}
	short := name[strings.LastIndexByte(name, '.')+1:]
	full := pkgPath + "." + short
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return Struct{}, fmt.Errorf("read DWARF: %w", err)
		}
		if e == nil {
			return Struct{}, fmt.Errorf("%w: %s not in DWARF", ErrTypeNotFound, full)
		}
		if e.Tag != dwarf.TagStructType {
			if e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		if n, _ := e.Val(dwarf.AttrName).(string); n != full {
			r.SkipChildren()
			continue
		}
		t, err := d.Type(e.Offset)
		if err != nil {
			return Struct{}, fmt.Errorf("read DWARF type %s: %w", full, err)
		}
		st, ok := t.(*dwarf.StructType)
		if !ok {
			return Struct{}, fmt.Errorf("DWARF type %s is a %T", full, t)
		}
		s := Struct{Name: name, PkgPath: pkgPath, Size: uint64(st.ByteSize)}
		for _, f := range st.Field {
			s.Fields = append(s.Fields, Field{Name: f.Name, Type: f.Type.String(), Offset: uint64(f.ByteOffset), Size: uint64(f.Type.Size())})
		}
		return s, nil
	}
}
