package tune

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kptune/internal/layout"
	"kptune/internal/patch"
	"kptune/internal/procfs"
	"kptune/internal/state"
	"kptune/internal/target"
)

// TestEveryProcessIsTried: without --pid, a kube-proxy that fails does not keep the ones after it
// from being changed (it stopped there, after earlier ones were changed); each gets its result, and
// the call fails with every error.
func TestEveryProcessIsTried(t *testing.T) {
	discover := func() ([]procfs.Process, error) {
		return []procfs.Process{{PID: 11}, {PID: 12}, {PID: 13}}, nil
	}
	var tried []int
	res, err := each(context.Background(), Options{Store: state.Store{Dir: t.TempDir()}, Log: quiet()}, discover, func(_ context.Context, _ Options, pid int) (ProcessResult, error) {
		tried = append(tried, pid)
		switch pid {
		case 12:
			return ProcessResult{}, errors.New("pid 12: refused")
		case 13:
			panic("a defect reading pid 13")
		}
		return ProcessResult{PID: pid}, nil
	})
	if len(tried) != 3 || len(res.Processes) != 3 {
		t.Fatalf("tried %v, results %+v", tried, res.Processes)
	}
	if err == nil || !strings.Contains(err.Error(), "2 of 3") || !strings.Contains(err.Error(), "pid 12: refused") || !strings.Contains(err.Error(), "a defect reading pid 13") {
		t.Errorf("error %v", err)
	}
	if res.Processes[0].Error != "" || res.Processes[1].PID != 12 || res.Processes[1].Error == "" || res.Processes[2].PID != 13 || res.Processes[2].Error == "" {
		t.Errorf("results %+v", res.Processes)
	}
}

// TestUnconfirmedLayoutIsRefused: a built-in layout that kube-proxy's values could not confirm is
// written with only when forced (writes went ahead before).
func TestUnconfirmedLayoutIsRefused(t *testing.T) {
	l := layout.Builtin(layout.Async)
	if err := confirmed(l, false); err != nil {
		t.Errorf("a confirmed layout: %v", err)
	}
	l.Unconfirmed = "/configz: connection refused"
	if err := confirmed(l, false); !errors.Is(err, patch.ErrRefused) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("an unconfirmed layout: %v", err)
	}
	if err := confirmed(l, true); err != nil {
		t.Errorf("an unconfirmed layout, forced: %v", err)
	}
}

// TestNoWriteWithoutAudit: where the audit log cannot take a change's intent, nothing is written.
func TestNoWriteWithoutAudit(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "audit.log"), 0o700); err != nil { // not a file
		t.Fatal(err)
	}
	p := &prepared{t: &target.Process{Process: procfs.Process{PID: os.Getpid()}}, unlock: func() {}}
	res := &ProcessResult{Runners: []RunnerResult{{Address: "0x10", Fields: []string{"minInterval"}}}}
	err := apply(context.Background(), Options{Store: state.Store{Dir: dir}, Log: quiet()}, p, res, target.Plan{{}}, "set")
	if err == nil || !strings.Contains(err.Error(), "audit log") || !strings.Contains(err.Error(), "nothing written") || res.Threads != 0 {
		t.Errorf("a write with an unwritable audit log: %v (threads stopped %d)", err, res.Threads)
	}
}
