package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"kptune/test/testbed"
)

var kptune string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kptune-cli-")
	if err != nil {
		panic(err)
	}
	kptune = filepath.Join(dir, "kptune")
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", kptune, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	os.Chmod(dir, 0o755)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs kptune, optionally as an unprivileged user with no capabilities, and returns its exit
// code, stdout and stderr.
func run(t *testing.T, asNobody bool, args ...string) (int, string, string) {
	t.Helper()
	if asNobody {
		return asUser(t, "", args...)
	}
	return runCmd(t, exec.Command(kptune, args...))
}

func runCmd(t *testing.T, cmd *exec.Cmd) (int, string, string) {
	t.Helper()
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// TestBadInput: each wrong target gets a one-line error naming the cause and what to do, a non-zero
// exit, and no panic.
func TestBadInput(t *testing.T) {
	testbed.NeedRoot(t, "the cases read other processes")
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	// A state directory of the unprivileged user's own, so that its run gets as far as the target.
	open, err := os.MkdirTemp("", "kptune-state-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(open)
	if err := os.Chown(open, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		nobody bool
		args   []string
		want   string
	}{
		{"not a Go program", false, []string{"inspect", "--pid", strconv.Itoa(sleep.Process.Pid)}, "is not a Go program, so not a kube-proxy: pick a kube-proxy PID"},
		{"a Go program that is not kube-proxy", false, []string{"inspect", "--pid", self}, "not a kube-proxy: pick a kube-proxy PID"},
		{"a PID that is gone", false, []string{"inspect", "--pid", strconv.Itoa(gone.Process.Pid)}, "check the PID"},
		{"set on a Go program that is not kube-proxy", false, []string{"set", "--min-sync-period", "2s", "--pid", self, "--state-dir", t.TempDir()}, "not a kube-proxy"},
		{"set with nothing to set", false, []string{"set", "--pid", self}, "nothing to set"},
		{"a bad period", false, []string{"set", "--min-sync-period", "fast"}, "invalid argument"},
		{"a bad output format", false, []string{"inspect", "-o", "yaml"}, "use table or json"},
		{"an unknown locator", false, []string{"inspect", "--locate", "gdb"}, "use auto, scan, uprobe or both"},
		{"a bad probe timeout", false, []string{"set", "--min-sync-period", "2s", "--probe-timeout", "0s"}, "must be positive"},
		{"no permission", true, []string{"inspect", "--pid", self}, "CAP_SYS_PTRACE"},
		{"no permission to set", true, []string{"set", "--min-sync-period", "2s", "--pid", self, "--state-dir", open}, "CAP_SYS_PTRACE"},
		{"a state directory it cannot write", true, []string{"set", "--min-sync-period", "2s", "--pid", self, "--state-dir", "/root/kptune-state"}, "use --state-dir"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, tc.nobody, tc.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || !strings.Contains(stderr, tc.want) || len(lines) != 1 || strings.Contains(stderr, "panic") {
			t.Errorf("%s: exit %d, stderr %q; want a non-zero exit and one line saying %q", tc.name, code, stderr, tc.want)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, false, "version")
	if code != 0 || !strings.HasPrefix(out, "kptune ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}
