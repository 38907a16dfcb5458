package memory

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"unsafe"
)

func TestProcessReadsOwnMemory(t *testing.T) {
	want := []byte("kptune reads this through process_vm_readv")
	got := make([]byte, len(want))
	if err := (Process{PID: os.Getpid()}).ReadMem(got, uint64(uintptr(unsafe.Pointer(&want[0])))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q", got)
	}
	if err := (Process{PID: 999999999}).ReadMem(got, 0x1000); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("reading a missing process: %v", err)
	}
}

func TestBytesBounds(t *testing.T) {
	b := Bytes{Base: 0x1000, Data: []byte{1, 2, 3, 4}}
	p := make([]byte, 2)
	if err := b.ReadMem(p, 0x1002); err != nil || p[0] != 3 || p[1] != 4 {
		t.Errorf("in bounds: %v %v", p, err)
	}
	for _, addr := range []uint64{0xfff, 0x1003, 0x1004, ^uint64(0)} {
		if err := b.ReadMem(p, addr); err == nil {
			t.Errorf("read at %#x succeeded outside the snapshot", addr)
		}
	}
}
