package testbed

// Target is one kube-proxy of the test matrix: a build and how to run it.
type Target struct {
	Build     Build
	Mode      string
	DualStack bool
}

func (t Target) String() string {
	s := t.Build.String() + "/" + t.Mode
	if t.DualStack {
		s += "/dual"
	}
	return s
}

// Matrix is every build and mode kptune is tested on with `make test-matrix`: both runner
// generations, stripped (as released), PIE, cgo, unstripped (DWARF ground truth), and older Go
// toolchains, in iptables, nftables and dual-stack mode.
var Matrix = []Target{
	{Build: Build{Version: "v1.24.17", Go: "/usr/lib/go-1.19/bin/go"}, Mode: IPTables},
	{Build: Build{Version: "v1.29.15"}, Mode: NFTables},
	{Build: Build{Version: "v1.29.15", Go: "go1.22.12"}, Mode: IPTables},
	{Build: Build{Version: "v1.32.8"}, Mode: NFTables},
	{Build: Build{Version: "v1.33.5"}, Mode: IPTables},
	{Build: Build{Version: "v1.33.5", PIE: true}, Mode: NFTables},
	{Build: Build{Version: "v1.33.5", CGO: true}, Mode: IPTables},
	{Build: Build{Version: "v1.33.5", Debug: true}, Mode: IPTables},
	{Build: Build{Version: "v1.34.4"}, Mode: NFTables},
	{Build: Build{Version: "v1.35.4"}, Mode: IPTables, DualStack: true},
	{Build: Build{Version: "v1.37.2"}, Mode: NFTables, DualStack: true},
	{Build: Build{Version: "v1.37.2", PIE: true}, Mode: IPTables},
	{Build: Build{Version: "v1.37.2", Debug: true}, Mode: NFTables},
}
