package patch

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"kptune/internal/freeze"
	"kptune/internal/locate"
	"kptune/internal/memory"
	"kptune/internal/procfs"
)

// Target is the process to write to, as it was when its runners were located.
type Target struct {
	PID       int
	StartTime uint64
	ExeDev    uint64 // device and inode of its executable: an exec keeps pid and start time
	ExeIno    uint64
	Locate    locate.Target
	Mem       memory.ReadWriter // the live process's memory
	// Pause, if set, is called at each step inside the stop ("checked": before the writes,
	// "written": after them): a fault-injection aid for tests that kill kptune there.
	Pause func(step string)
}

// RunnerWrites are the writes planned for one runner.
type RunnerWrites struct {
	Found  locate.Found
	Writes []Write
}

// Applied is what one Apply did: its stop, and the writes it made for each runner of the plan, in
// the plan's order (an adjusted field with the value computed inside the stop; one Adjust left
// alone is not there).
type Applied struct {
	freeze.Stats
	Written [][]Write
	// Busy is how many stops before the one that wrote found a rate limiter locked, and wrote
	// nothing.
	Busy int
}

// ErrBusy is wrapped when a stop found a thread of kube-proxy inside a rate limiter's critical
// section: it would store the tokens it computed from the old rate over what was written.
var ErrBusy = errors.New("its rate limiter is locked by a thread of kube-proxy")

// Stops a write tries when it finds a rate limiter locked (held for nanoseconds at a time), and the
// pause between them.
const (
	busyStops = 5
	busyPause = 10 * time.Millisecond
)

// Apply stops the process, checks that it is the same process running the same binary, that every
// runner still has its signature and the values it was planned from and that no thread holds its
// rate limiter's lock, writes, reads every write back, and releases the process. On any difference
// nothing is written (or what was written is restored). A locked rate limiter releases the process
// unchanged and tries again in a new stop, up to busyStops stops.
func Apply(t Target, rws []RunnerWrites) (Applied, error) {
	if t.Mem == nil {
		return Applied{}, errors.New("apply needs a live process's memory")
	}
	for busy := 0; ; busy++ {
		a, err := apply(t, rws)
		a.Busy = busy
		if !errors.Is(err, ErrBusy) || busy+1 == busyStops {
			if errors.Is(err, ErrBusy) {
				err = fmt.Errorf("%w in %d stops %v apart: nothing written; run kptune again", err, busyStops, busyPause)
			}
			return a, err
		}
		time.Sleep(busyPause)
	}
}

// apply is one stop of Apply.
func apply(t Target, rws []RunnerWrites) (Applied, error) {
	mem := t.Mem
	l := t.Locate.Layout
	var writes [][]Write // each runner's, adjusted fields computed from what they hold now
	st, err := freeze.Do(t.PID, func() error {
		if !procfs.Alive(t.PID, t.StartTime) {
			return fmt.Errorf("pid %d is no longer the process that was inspected (it exited or restarted): nothing written; run kptune again: %w", t.PID, procfs.ErrGone)
		}
		if dev, ino, err := procfs.ExeID(t.PID); err != nil || dev != t.ExeDev || ino != t.ExeIno {
			return fmt.Errorf("pid %d now runs another executable: nothing written; run kptune again: %w", t.PID, locate.ErrStale)
		}
		writes = nil
		for _, rw := range rws {
			if err := locate.Revalidate(t.Locate, rw.Found); err != nil {
				return fmt.Errorf("%w: nothing written; run kptune again", err)
			}
			if rw.Found.LimitAddr != 0 && l.RateMuKnown {
				// sync.Mutex's state word leads it; its lowest bit is set while held.
				var state [4]byte
				if err := mem.ReadMem(state[:], rw.Found.LimitAddr+l.RateMu); err != nil {
					return err
				}
				if state[0]&1 != 0 {
					return fmt.Errorf("runner %#x: %w", rw.Found.Address, ErrBusy)
				}
			}
			var ws []Write
			for _, w := range rw.Writes {
				size := len(w.Old)
				if w.Adjust != nil {
					size = 8
				}
				cur := make([]byte, size)
				if err := mem.ReadMem(cur, w.Addr); err != nil {
					return err
				}
				if w.Adjust != nil {
					n, err := w.Adjust(cur)
					if err != nil {
						return fmt.Errorf("runner %#x: %w: nothing written; run kptune again", rw.Found.Address, err)
					}
					if n == nil {
						continue
					}
					w.Old, w.New, w.Adjust = cur, n, nil
				} else if !bytes.Equal(cur, w.Old) {
					return fmt.Errorf("runner %#x: %s %w: nothing written; run kptune again", rw.Found.Address, w.Field, locate.ErrStale)
				}
				ws = append(ws, w)
			}
			writes = append(writes, ws)
		}
		t.pause("checked")
		var done []Write
		err := func() error {
			for i, rw := range rws {
				for _, w := range writes[i] {
					if err := mem.WriteMem(w.New, w.Addr); err != nil {
						return err
					}
					done = append(done, w)
					back := make([]byte, len(w.New))
					if err := mem.ReadMem(back, w.Addr); err != nil {
						return err
					}
					if !bytes.Equal(back, w.New) {
						return fmt.Errorf("runner %#x: %s read back %x after writing %x", rw.Found.Address, w.Field, back, w.New)
					}
				}
			}
			return nil
		}()
		if err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				_ = mem.WriteMem(done[i].Old, done[i].Addr)
			}
			return fmt.Errorf("write failed, previous values restored: %w", err)
		}
		t.pause("written")
		return nil
	})
	if err != nil {
		return Applied{Stats: st}, err
	}
	return Applied{Stats: st, Written: writes}, nil
}

func (t Target) pause(step string) {
	if t.Pause != nil {
		t.Pause(step)
	}
}
