package probe_test

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"testing"

	"kptune/internal/probe"
)

// FuzzDecode: any pt_regs snapshot and stack decode or are refused, on both architectures and ABIs.
func FuzzDecode(f *testing.F) {
	regs := make([]byte, 34*8)
	binary.LittleEndian.PutUint64(regs[80:], 0xc000123400)
	binary.LittleEndian.PutUint64(regs[152:], 0x7ffd0000)
	f.Add(regs, uint64(0xc000123400), true, 17)
	f.Fuzz(func(t *testing.T, regs []byte, word uint64, arm bool, minor int) {
		m := elf.EM_X86_64
		if arm {
			m = elf.EM_AARCH64
		}
		abi, err := probe.ABIFor(m, minor)
		if err != nil {
			t.Fatal(err)
		}
		s, err := abi.Decode(1, regs, func(addr uint64) (uint64, error) {
			if addr%2 == 0 {
				return word, nil
			}
			return 0, errors.New("unmapped")
		})
		if err != nil {
			return
		}
		if r := abi.Receivers(s); len(r) != 2 {
			t.Fatalf("%d candidates", len(r))
		}
	})
}
