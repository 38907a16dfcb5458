package freeze

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kptune/internal/procfs"

	"kptune/test/testbed"
)

// The test binary doubles as a tracer that holds a stop until it is killed.
func TestMain(m *testing.M) {
	if os.Getenv("KPTUNE_FREEZE_SPAWN") != "" {
		spawnThreads()
	}
	if pid, err := strconv.Atoi(os.Getenv("KPTUNE_FREEZE_HOLD_PID")); err == nil {
		_, err := Do(pid, func() error {
			fmt.Println("stopped")
			time.Sleep(time.Minute)
			return nil
		})
		fmt.Println("released", err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	testbed.NeedRoot(t, "ptrace of another process needs CAP_SYS_PTRACE")
}

func startFixture(t *testing.T) *testbed.FixtureProcess {
	t.Helper()
	ctx := context.Background()
	bin, err := testbed.Build{Version: "v1.33.5"}.Fixture(ctx, testbed.AsyncRunner)
	if err != nil {
		t.Fatal(err)
	}
	f, err := testbed.StartFixture(ctx, bin, "-min-sync-period", "100ms", "-trigger-rate", "50")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	return f
}

// states returns the state letter of every thread of pid.
func states(t *testing.T, pid int) map[int]byte {
	t.Helper()
	tids, err := procfs.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]byte{}
	for _, tid := range tids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		out[tid] = b[i+2]
	}
	return out
}

func TestStopsEveryThreadAndReleasesThem(t *testing.T) {
	needRoot(t)
	f := startFixture(t)
	var inside map[int]byte
	st, err := Do(f.PID, func() error {
		inside = states(t, f.PID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(inside) < 2 || st.Threads != len(inside) {
		t.Fatalf("stopped %d threads, saw %d", st.Threads, len(inside))
	}
	for tid, s := range inside {
		if s != 't' {
			t.Errorf("thread %d in state %c inside the stop, want t (tracing stop)", tid, s)
		}
	}
	t.Logf("%d threads stopped for %v", st.Threads, st.Stopped)
	checkReleased(t, f, "a stop")
}

// spawnThreads is a process whose threads multiply and die without pause: goroutines that lock
// their OS thread and end make the runtime start a new thread and let the old one exit.
func spawnThreads() {
	fmt.Println("spawning")
	for {
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
				time.Sleep(time.Millisecond)
			}()
		}
		wg.Wait()
	}
}

// TestThreadsMultiplying: a process whose threads are born and die without pause is still stopped
// whole (every thread that exists inside the stop is stopped) and released whole, repeatedly.
func TestThreadsMultiplying(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KPTUNE_FREEZE_SPAWN=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if _, err := out.Read(make([]byte, 9)); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	seen := map[int]bool{}
	// At least 50 stops, and on until 30 threads were seen (a loaded machine slows the spawner).
	round := 0
	for ; round < 50 || (len(seen) < 30 && round < 1000); round++ {
		st, err := Do(pid, func() error {
			for tid, s := range states(t, pid) {
				seen[tid] = true
				if s != 't' {
					return fmt.Errorf("thread %d in state %c inside the stop", tid, s)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if st.Threads < 2 {
			t.Fatalf("round %d: %d threads stopped", round, st.Threads)
		}
		if tp, err := TracerPID(pid); tp != 0 || err != nil {
			t.Fatalf("round %d: TracerPid %d (%v) after release", round, tp, err)
		}
	}
	if len(seen) < 30 {
		t.Errorf("only %d distinct threads over %d stops: the process did not multiply its threads", len(seen), round)
	}
	t.Logf("%d stops of a process that went through %d threads", round, len(seen))
}

// checkReleased checks that nothing traces or stops the fixture, and that its runner runs on.
func checkReleased(t *testing.T, f *testbed.FixtureProcess, after string) {
	t.Helper()
	runs := len(f.Runs())
	time.Sleep(500 * time.Millisecond)
	if tp, err := TracerPID(f.PID); tp != 0 || err != nil {
		t.Fatalf("TracerPid %d (%v) after %s", tp, err, after)
	}
	for tid, s := range states(t, f.PID) {
		if s == 't' || s == 'T' {
			t.Fatalf("thread %d stopped (%c) after %s", tid, s, after)
		}
	}
	if len(f.Runs()) <= runs {
		t.Fatalf("the runner did not run after %s", after)
	}
}

func TestErrorInsideStillReleases(t *testing.T) {
	needRoot(t)
	f := startFixture(t)
	boom := errors.New("boom")
	if _, err := Do(f.PID, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	checkReleased(t, f, "a failed fn")
}

// TestTracerKilledInsideTheStop kills the tracer (SIGKILL) while it holds the process stopped: the
// kernel must release the process, which runs on.
func TestTracerKilledInsideTheStop(t *testing.T) {
	needRoot(t)
	f := startFixture(t)
	for i := 0; i < 3; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "KPTUNE_FREEZE_HOLD_PID="+strconv.Itoa(f.PID))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "stopped") {
			t.Fatalf("the tracer did not report the stop: %q %v", buf, err)
		}
		// TracerPid names the tracing thread; its thread group is the tracer process.
		tp, _ := TracerPID(f.PID)
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tp)); err != nil || !strings.Contains(string(st), fmt.Sprintf("\nTgid:\t%d\n", cmd.Process.Pid)) {
			t.Fatalf("TracerPid %d is not a thread of the tracer %d", tp, cmd.Process.Pid)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		checkReleased(t, f, "the tracer was killed")
	}
}

func TestAlreadyTraced(t *testing.T) {
	needRoot(t)
	f := startFixture(t)
	seized, release := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := unix.PtraceSeize(f.PID)
		seized <- err
		<-release
		if err == nil {
			_ = unix.PtraceDetach(f.PID)
		}
	}()
	if err := <-seized; err != nil {
		t.Fatal(err)
	}
	_, err := Do(f.PID, func() error { return nil })
	close(release)
	if !errors.Is(err, ErrTraced) {
		t.Fatalf("got %v, want ErrTraced", err)
	}
}

func TestGone(t *testing.T) {
	if _, err := Do(999999999, func() error { return nil }); err == nil {
		t.Fatal("stopping a missing process succeeded")
	}
}

// BenchmarkStop stops a fixture process (a real runner, about 7 threads) and reports the stop's
// length. With KPTUNE_BENCH_LOAD=N, N busy loops keep the CPUs saturated meanwhile.
func BenchmarkStop(b *testing.B) {
	testbed.NeedRoot(b, "ptrace of another process needs CAP_SYS_PTRACE")
	ctx := context.Background()
	bin, err := testbed.Build{Version: "v1.33.5"}.Fixture(ctx, testbed.AsyncRunner)
	if err != nil {
		b.Fatal(err)
	}
	f, err := testbed.StartFixture(ctx, bin, "-min-sync-period", "100ms", "-trigger-rate", "50")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Stop()
	if n, _ := strconv.Atoi(os.Getenv("KPTUNE_BENCH_LOAD")); n > 0 {
		for i := 0; i < n; i++ {
			busy := exec.Command("sh", "-c", "while :; do :; done")
			if err := busy.Start(); err != nil {
				b.Fatal(err)
			}
			defer busy.Process.Kill()
		}
	}
	// The setups, interleaved stop by stop so that the machine's state weighs on each alike: the
	// default; the runtime's sleep between polls instead of the thread's (an earlier choice); every
	// thread interrupted as soon as it is seized instead of after the round's last seize; and the
	// stop taken right after one of the runner's runs (kube-proxy just synced) instead of at any time.
	setups := []string{"default", "sleep=runtime", "interrupt=each", "when=after-run"}
	stops := map[string][]time.Duration{}
	stopping := map[string]time.Duration{}
	saved := nap
	i := 0
	for b.Loop() {
		setup := setups[i%len(setups)]
		i++
		nap, interruptEach = saved, false
		switch setup {
		case "sleep=runtime":
			nap = func() { time.Sleep(napFor) }
		case "interrupt=each":
			interruptEach = true
		case "when=after-run":
			for n := len(f.Runs()); len(f.Runs()) == n; {
				time.Sleep(100 * time.Microsecond)
			}
		}
		st, err := Do(f.PID, func() error { return nil })
		nap, interruptEach = saved, false
		if err != nil {
			b.Fatal(err)
		}
		stops[setup] = append(stops[setup], st.Stopped)
		stopping[setup] += st.Stopping
		time.Sleep(5 * time.Millisecond)
	}
	for _, setup := range setups {
		ds := stops[setup]
		if len(ds) == 0 {
			continue
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		at := func(p int) float64 { return float64(ds[min(len(ds)-1, len(ds)*p/100)]) / float64(time.Microsecond) }
		name := strings.NewReplacer("=", "-").Replace(setup)
		b.ReportMetric(at(50), name+"-p50-µs")
		b.ReportMetric(at(99), name+"-p99-µs")
		b.ReportMetric(100*float64(stopping[setup])/float64(sumDurations(ds)), name+"-%stopping")
		b.Logf("%s: %d stops, p50 %.0f µs, p90 %.0f µs, p99 %.0f µs, max %.0f µs", setup, len(ds), at(50), at(90), at(99), at(100))
	}
}

func sumDurations(ds []time.Duration) time.Duration {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return s
}

// TestKilledInsideTheStopIsReaped: a target killed while its threads are stopped is released to
// its parent, which reaps it within a second of the stop's end, as a container's init must to let
// kube-proxy restart. The parent is a shell, not this test (a parent in the tracer's own process
// would see the exit whatever the tracer does). Before the fix the dead target stayed a zombie
// traced by a runtime thread of the tracer's until the tracer exited.
func TestKilledInsideTheStopIsReaped(t *testing.T) {
	needRoot(t)
	bin, err := testbed.Build{Version: "v1.33.5"}.Fixture(context.Background(), testbed.AsyncRunner)
	if err != nil {
		t.Fatal(err)
	}
	sh := exec.Command("sh", "-c", `"$0" -min-sync-period 100ms & echo "child $!"; wait $!; echo "reaped $?"`, bin)
	sh.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.Process.Kill(); _ = sh.Wait() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		buf := make([]byte, 4096)
		var pending string
		for {
			n, err := out.Read(buf)
			pending += string(buf[:n])
			for {
				i := strings.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				lines <- pending[:i]
				pending = pending[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	pid := 0
	for l := range lines {
		if v, ok := strings.CutPrefix(l, "child "); ok {
			pid, _ = strconv.Atoi(v)
		}
		if strings.HasPrefix(l, "ready") {
			break
		}
	}
	if pid == 0 {
		t.Fatal("the shell did not start the fixture")
	}
	_, err = Do(pid, func() error {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return err
		}
		// Inside the stop until the kill has taken every thread.
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if s := procfs.ThreadState(pid, pid); s == 'Z' || s == 'X' || s == 0 {
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Logf("stop: %v", err)
	}
	released := time.Now()
	timeout := time.After(time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the shell ended without reaping the fixture")
			}
			if strings.Contains(l, "reaped ") { // a line the killed fixture left unfinished may precede it
				t.Logf("reaped by its parent %v after the stop ended (%s)", time.Since(released).Round(time.Millisecond), l)
				return
			}
		case <-timeout:
			state := procfs.ThreadState(pid, pid)
			tracer, _ := TracerPID(pid)
			t.Fatalf("pid %d not reaped by its parent 1 s after the stop ended: state %q, traced by %d", pid, state, tracer)
		}
	}
}
