package testbed

import (
	"errors"
	"os"
	"testing"
)

// Under `go test -short` (make test-unit) tests run without root and without building anything:
// a test that needs either skips itself with NeedRoot or NeedBuilds, and `make test` runs it.

// ErrShort is returned by every build of the test bed under -short: a test that builds without
// calling NeedBuilds fails at once rather than spending minutes compiling kube-proxy.
var ErrShort = errors.New("-short (make test-unit) builds nothing: call testbed.NeedBuilds(t) first")

// NeedRoot skips the test unless it runs as root, and under -short; why names what needs root.
func NeedRoot(tb testing.TB, why string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: needs root (" + why + "); make test runs it")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root: " + why)
	}
}

// NeedBuilds skips the test under -short: it builds (or reads from the cache) upstream binaries.
func NeedBuilds(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: needs kube-proxy builds; make test runs it")
	}
}

// short reports whether builds are refused: testing.Short, where the testing flags exist (this
// package also runs in the test bed's own command, which has none).
func short() bool {
	return testing.Testing() && testing.Short()
}
