package locate

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"kptune/internal/gobin"
	"kptune/internal/layout"
	"kptune/internal/memory"
	"kptune/internal/procfs"
	"kptune/test/testbed"
)

// exiting is a process whose memory reads fail as if it exited after a few reads.
type exiting struct{ reads int }

func (e *exiting) ReadMem(p []byte, addr uint64) error {
	if e.reads--; e.reads < 0 {
		return fmt.Errorf("read memory at %#x: %w", addr, memory.ErrExited)
	}
	clear(p)
	return nil
}

// TestScanStopsWhenTheProcessExits: a process that exits mid-scan ends the scan with an error
// that says so, instead of a result read from half a process.
func TestScanStopsWhenTheProcessExits(t *testing.T) {
	testbed.NeedBuilds(t)
	b, l := openFixture(t, testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner)
	maps := []procfs.Mapping{{Start: 0xc000000000, End: 0xc000400000, Perms: "rw-p"}}
	found, err := Scan(context.Background(), Target{Mem: &exiting{reads: 2}, Maps: maps, Binary: b, Layout: l})
	if !errors.Is(err, memory.ErrExited) || found != nil {
		t.Fatalf("got %v, %v; want ErrExited and nothing found", found, err)
	}
	// A snapshot with no runner in it: nothing found, no error.
	snap := memory.Bytes{Base: 0xc000000000, Data: make([]byte, 4<<20)}
	if found, err := Scan(context.Background(), Target{Mem: snap, Maps: maps, Binary: b, Layout: l}); err != nil || len(found) != 0 {
		t.Fatalf("empty memory: %v, %v", found, err)
	}
}

// openFixture analyses a fixture binary and reads its layout.
func openFixture(t *testing.T, build testbed.Build, fixture string) (*gobin.Binary, layout.Layout) {
	t.Helper()
	path, err := build.Fixture(context.Background(), fixture)
	if err != nil {
		t.Fatal(err)
	}
	b, err := gobin.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	l, err := layout.Of(b)
	if err != nil {
		t.Fatal(err)
	}
	return b, l
}
