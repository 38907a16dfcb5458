// Package freeze stops every thread of a process for as short a time as possible, so that kptune can
// re-validate and write a runner while nothing in the process runs.
//
// It uses PTRACE_SEIZE and PTRACE_INTERRUPT on each thread, all from one locked OS thread (ptrace
// binds a tracee to the tracing thread). SEIZE, unlike ATTACH, sends no SIGSTOP: if kptune dies at any
// moment, even by SIGKILL, the kernel detaches its tracees and they run on, because a thread in a
// ptrace event-stop is not in a group-stop. A thread that was about to receive a signal (Go's
// preemption signal SIGURG, most often) stops in signal-delivery-stop instead; the signal is handed
// back to it when it is detached. Threads created while the stop is being taken are seized in turn,
// until the thread list is stable: a stopped thread cannot create another.
package freeze

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"kptune/internal/procfs"
)

// ErrTraced is returned when another tracer (a debugger) already holds the process.
var ErrTraced = errors.New("the process is already traced (a debugger?): detach it first")

var errDetach = errors.New("release thread")

// Stats describe one stop.
type Stats struct {
	Threads int
	// Stopped is how long the first thread was stopped before the last was released: the longest
	// any thread of the process was held. Stopping (until every thread had stopped) and Inside (fn)
	// are its parts; the rest is releasing the threads.
	Stopped, Stopping, Inside time.Duration
	// CPU is what the stop cost kptune: the tracing thread's CPU time, from its first seize to its
	// last release.
	CPU time.Duration
}

// Do stops every thread of pid, runs fn, and releases them, whatever fn returns. fn runs on the
// tracing OS thread and must not block for long.
func Do(pid int, fn func() error) (Stats, error) {
	type result struct {
		st  Stats
		err error
	}
	res := make(chan result, 1)
	go func() {
		// A ptrace tracer is an OS thread. Once every tracee is detached the thread is clean and goes
		// back to the runtime; if a tracee could not be detached, or one that died in the stop
		// could not be collected (see reap), it stays locked, so it exits with this goroutine and the
		// kernel releases what it still traces. (Exiting threads needlessly has a cost beyond the
		// runtime: a child started with Pdeathsig from this thread would be killed.)
		runtime.LockOSThread()
		cpu0 := threadCPU()
		st, release, err := do(pid, fn)
		st.CPU = threadCPU() - cpu0
		if !release {
			runtime.UnlockOSThread()
		}
		res <- result{st, err}
	}()
	r := <-res
	return r.st, r.err
}

// threadCPU is the calling thread's user and system CPU time.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type tracee struct {
	tid     int
	stopped bool
	sig     syscall.Signal // a signal to hand back on detach
}

// do stops, runs fn and releases; release reports a tracee left for the thread's exit to release.
func do(pid int, fn func() error) (st Stats, release bool, err error) {
	// Precise naps while this thread waits for the stop; 0 restores the thread's default slack.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)
	seized := map[int]*tracee{}
	var gone []*tracee // tracees that died during the stop
	var first time.Time
	interrupt := func(t *tracee) error {
		if first.IsZero() {
			first = time.Now()
		}
		if err := unix.PtraceInterrupt(t.tid); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("interrupt thread %d: %w", t.tid, err)
		}
		return nil
	}
	defer func() {
		for _, t := range seized {
			if !t.stopped {
				// PTRACE_DETACH needs a stopped tracee, and this one still has an interrupt pending.
				// Leave it to the kernel: the tracing thread exits (see Do) and every tracee is
				// released, its pending stop cleared.
				release = true
				err = errors.Join(err, fmt.Errorf("%w %d: it never stopped", errDetach, t.tid))
				continue
			}
			switch derr := detach(t); {
			case errors.Is(derr, unix.ESRCH):
				// No longer in a stop: killed (SIGKILL ends a ptrace-stop), exiting or a zombie still
				// traced. Not an error of the write, but only the tracer's wait (or its exit) lets its
				// parent reap it.
				gone = append(gone, t)
			case derr != nil:
				release = true
				err = errors.Join(err, fmt.Errorf("%w %d: %w", errDetach, t.tid, derr))
			}
		}
		if !first.IsZero() {
			st.Stopped = time.Since(first)
		}
		st.Threads = len(seized)
		if !reap(gone) {
			release = true
		}
	}()
	for round := 0; ; round++ {
		tids, err := procfs.Threads(pid)
		if err != nil {
			return st, release, err
		}
		var fresh []*tracee
		for _, tid := range tids {
			if seized[tid] != nil {
				continue
			}
			if err := unix.PtraceSeize(tid); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue // the thread exited
				}
				if errors.Is(err, unix.EPERM) {
					// The kernel refuses to attach to a thread that is exiting: one less to stop.
					if s := procfs.ThreadState(pid, tid); s == 0 || s == 'Z' || s == 'X' {
						continue
					}
					if tracedByOther(pid, tid, unix.Gettid()) {
						return st, release, ErrTraced
					}
					return st, release, fmt.Errorf("seize thread %d: %w", tid, procfs.ErrPermission)
				}
				return st, release, fmt.Errorf("seize thread %d: %w", tid, err)
			}
			t := &tracee{tid: tid}
			seized[tid] = t
			fresh = append(fresh, t)
			if interruptEach {
				if err := interrupt(t); err != nil {
					return st, release, err
				}
			}
		}
		// Seizing stops nothing; the interrupts stop the threads, so they are sent back to back,
		// after every seize, and the stop starts with the first of them.
		for _, t := range fresh {
			if interruptEach {
				break
			}
			if err := interrupt(t); err != nil {
				return st, release, err
			}
		}
		added := len(fresh)
		for _, t := range seized {
			if !t.stopped {
				if err := wait(pid, t); err != nil {
					return st, release, err
				}
			}
		}
		if added == 0 {
			break
		}
		if round > maxRounds {
			return st, release, errors.New("the process keeps creating threads: try again")
		}
	}
	inside := time.Now()
	st.Stopping = inside.Sub(first)
	err = fn()
	st.Inside = time.Since(inside)
	return st, release, err
}

// reapTimeout bounds the wait for the threads of a process that died during the stop.
const reapTimeout = time.Second

// reap collects the exit of each tracee that died during the stop, which the kernel reports to its
// tracer before its parent: once every thread is collected, the process's parent (a container's
// init) is told and can reap it. It reports whether it collected them all; if not, the tracing
// thread exits (see Do) and the kernel releases the rest. A thread group's leader is reported only
// after its other threads, hence the loop over all of them.
func reap(gone []*tracee) bool {
	deadline := time.Now().Add(reapTimeout)
	for len(gone) > 0 && time.Now().Before(deadline) {
		left := gone[:0]
		for _, t := range gone {
			var ws unix.WaitStatus
			wpid, err := unix.Wait4(t.tid, &ws, unix.WALL|unix.WNOHANG, nil)
			if wpid == 0 && (err == nil || errors.Is(err, unix.EINTR)) {
				left = append(left, t) // still exiting
			}
			// Reaped, or no longer this thread's tracee (ECHILD): done with it.
		}
		gone = left
		if len(gone) > 0 {
			nap()
		}
	}
	return len(gone) == 0
}

// interruptEach interrupts each thread as soon as it is seized, rather than all of a round's threads
// after its last seize: the alternative BenchmarkStop measures beside the default.
var interruptEach = false

// maxRounds bounds the rounds of seizing the threads that appeared since the last one: a process
// that keeps creating threads faster than they are stopped is not stopped at all.
const maxRounds = 100

// spinsBeforeState is how many polls of a thread's wait status pass (each a nap, some 2 ms in all)
// before its state in /proc is read as well, for a stop whose report another waiter took.
const spinsBeforeState = 200

// napFor is the pause between two polls of a thread's stop.
const napFor = 10 * time.Microsecond

// stopTimeout bounds the wait for one thread's stop: a thread blocked in the kernel (D state)
// stops only when it returns to user space.
const stopTimeout = 2 * time.Second

// wait waits for a seized thread's first ptrace-stop. It polls, so that it can give up: a thread
// that does not stop in time fails the whole stop (and every thread is released) instead of holding
// the others. If the stop's report was taken by another waiter (a parent of the target in the same
// process as kptune, as in tests), the thread's state in /proc shows the stop all the same.
func wait(pid int, t *tracee) error {
	deadline := time.Now().Add(stopTimeout)
	for spins := 0; ; spins++ {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(t.tid, &ws, unix.WALL|unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			t.stopped = true // it exited
			return nil
		case err != nil:
			return fmt.Errorf("wait for thread %d: %w", t.tid, err)
		case wpid == t.tid && (ws.Exited() || ws.Signaled()):
			t.stopped = true
			return nil
		case wpid == t.tid && ws.Stopped():
			t.stopped = true
			// PTRACE_INTERRUPT stops report PTRACE_EVENT_STOP in bits 16-23, and so do group-stops of
			// a seized thread (whose signal is already delivered). A stop with no event is a signal on
			// its way to the thread: keep it to hand back on detach.
			if uint32(ws)>>16 == 0 {
				t.sig = ws.StopSignal()
			}
			return nil
		}
		if spins > spinsBeforeState && procfs.ThreadState(pid, t.tid) == 't' {
			t.stopped = true
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("thread %d did not stop within %v (blocked in the kernel?): nothing written, try again", t.tid, stopTimeout)
		}
		// Sleep rather than spin: on a busy machine a spinning tracer takes the CPU from the very
		// threads it waits for (measured: stop p50 375 → 250 µs idle with BenchmarkStop).
		nap()
	}
}

// nap pauses the tracing thread between polls. It sleeps in the kernel on this very thread, with
// the thread's timer slack at 1 ns for the stop (see do): the runtime's time.Sleep parks the
// goroutine and wakes the locked thread through the scheduler, late under load
// (BenchmarkStop/sleep=runtime against sleep=thread).
var nap = func() { _ = unix.Nanosleep(&unix.Timespec{Nsec: int64(napFor)}, nil) }

func detach(t *tracee) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(t.tid), 0, uintptr(t.sig), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// traced reports whether another process traces pid (TracerPid in /proc/PID/status).
// tracedByOther reports whether thread tid of pid is traced by another tracer than self (the thread
// that runs the stop).
func tracedByOther(pid, tid, self int) bool {
	tracer, err := tracerOf(procfs.TaskPath(pid, tid, "status"))
	return err == nil && tracer != 0 && tracer != self
}

// TracerPID reads TracerPid from /proc/PID/status.
func TracerPID(pid int) (int, error) {
	return tracerOf(procfs.TaskPath(pid, 0, "status"))
}

func tracerOf(status string) (int, error) {
	v, err := procfs.StatusField(status, "TracerPid")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}
