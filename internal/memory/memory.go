// Package memory reads another process's memory, or a snapshot of it, through one small interface,
// so that the runner locator runs the same over a live process and over bytes in tests.
package memory

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"kptune/internal/procfs"
)

// ErrExited ends a read or write of a process that has exited, besides a fault at an unmapped
// address; a refused one wraps procfs.ErrPermission.
var ErrExited = errors.New("the process has exited")

// Reader reads memory at virtual addresses of a target. Unlike io.ReaderAt it takes an address, not
// an offset, and reads all of p or fails.
type Reader interface {
	ReadMem(p []byte, addr uint64) error
}

// ReadWriter reads and writes memory at virtual addresses of a live process.
type ReadWriter interface {
	Reader
	// WriteMem writes all of p at addr, or fails.
	WriteMem(p []byte, addr uint64) error
}

// Process reads a live process's memory with process_vm_readv(2), which needs the same permission
// as ptrace attach (CAP_SYS_PTRACE for another user's process) and stops nothing.
type Process struct{ PID int }

var _ ReadWriter = Process{}

// ReadMem implements Reader.
func (m Process) ReadMem(p []byte, addr uint64) error {
	if len(p) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &p[0], Len: uint64(len(p))}}
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	n, err := unix.ProcessVMReadv(m.PID, local, remote, 0)
	return m.check("read", addr, n, len(p), err)
}

// WriteMem writes p at addr with process_vm_writev(2); a short write returns an error.
func (m Process) WriteMem(p []byte, addr uint64) error {
	if len(p) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &p[0], Len: uint64(len(p))}}
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	n, err := unix.ProcessVMWritev(m.PID, local, remote, 0)
	return m.check("write", addr, n, len(p), err)
}

// check turns the result of a process_vm_* call into an error that says what to do.
func (m Process) check(op string, addr uint64, n, want int, err error) error {
	switch {
	case errors.Is(err, syscall.ESRCH):
		return fmt.Errorf("%s memory of pid %d: %w", op, m.PID, ErrExited)
	case errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%s memory of pid %d: %w", op, m.PID, procfs.ErrPermission)
	case err != nil:
		return fmt.Errorf("%s memory of pid %d at %#x: %w", op, m.PID, addr, err)
	case n != want:
		return fmt.Errorf("%s memory of pid %d at %#x: short %s (%d of %d bytes)", op, m.PID, addr, op, n, want)
	}
	return nil
}

// Bytes is a snapshot: Data holds the memory from Base.
type Bytes struct {
	Base uint64
	Data []byte
}

// ReadMem implements Reader.
func (b Bytes) ReadMem(p []byte, addr uint64) error {
	if addr < b.Base || addr-b.Base > uint64(len(b.Data)) || uint64(len(p)) > uint64(len(b.Data))-(addr-b.Base) {
		return fmt.Errorf("read %d bytes at %#x: outside the snapshot", len(p), addr)
	}
	copy(p, b.Data[addr-b.Base:])
	return nil
}
