// Package version reports kptune's own version and the Go toolchain that built it.
//
// Release builds inject the version with
// -ldflags "-X kptune/internal/version.version=v0.1.0"; other builds fall back to the module
// version and VCS revision recorded in the binary's build information.
package version

import (
	"runtime"
	"runtime/debug"
)

// version is set by the linker in release builds.
var version = ""

// Version returns kptune's version: the injected one, else the module version or VCS revision.
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

// GoVersion returns the Go toolchain kptune was built with.
func GoVersion() string { return runtime.Version() }
