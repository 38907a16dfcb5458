package layout

import (
	"context"
	"testing"

	"kptune/internal/gobin"
	"kptune/test/testbed"
)

// TestLayoutSourcesAgree checks, on fixtures of both generations, that the layout read from type
// descriptors equals the built-in table and, on unstripped builds, the layout read from DWARF.
func TestLayoutSourcesAgree(t *testing.T) {
	testbed.NeedBuilds(t)
	for _, tc := range []struct {
		build   testbed.Build
		fixture string
		gen     Generation
	}{
		{testbed.Build{Version: "v1.33.5"}, testbed.AsyncRunner, Async},
		{testbed.Build{Version: "v1.33.5", Debug: true}, testbed.AsyncRunner, Async},
		{testbed.Build{Version: "v1.33.5", PIE: true, Debug: true}, testbed.AsyncRunner, Async},
		{testbed.Build{Version: "v1.33.5", CGO: true, Debug: true}, testbed.AsyncRunner, Async},
		{testbed.Build{Version: "v1.37.2"}, testbed.ProxyRunner, Runner},
		{testbed.Build{Version: "v1.37.2", Debug: true}, testbed.ProxyRunner, Runner},
	} {
		t.Run(tc.build.String(), func(t *testing.T) {
			b, l := openFixture(t, tc.build, tc.fixture)
			if l.Generation != tc.gen || l.Source != "type descriptors" || l.TokenBucketType == 0 && tc.gen == Async {
				t.Fatalf("generation %s from %s (token bucket type %#x)", l.Generation, l.Source, l.TokenBucketType)
			}
			if g, err := generationFromFunctions(b); err != nil || g != l.Generation {
				t.Errorf("generation from functions %q (%v), from type descriptors %q", g, err, l.Generation)
			}
			table := Builtin(tc.gen)
			got := l
			got.Source, table.Source, got.TokenBucketType = "", "", 0
			if got != table {
				t.Errorf("type descriptors and built-in table differ:\n%+v\n%+v", got, table)
			}
			d, err := FromDWARF(b)
			if !tc.build.Debug {
				if err == nil {
					t.Errorf("a stripped build gave a DWARF layout")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d.Source, d.TokenBucketType = "", 0
			if d != got {
				t.Errorf("type descriptors and DWARF differ:\n%+v\n%+v", got, d)
			}
		})
	}
}

// openFixture analyses a fixture binary and reads its layout.
func openFixture(t *testing.T, build testbed.Build, fixture string) (*gobin.Binary, Layout) {
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
	l, err := Of(b)
	if err != nil {
		t.Fatal(err)
	}
	return b, l
}
