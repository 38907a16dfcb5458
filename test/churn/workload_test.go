package churn

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestDeploySteps(t *testing.T) {
	// Scale-down: 100 → 0 one endpoint at a time, then back to 100 new addresses, in 4 s of pauses
	// and 5 s of removals.
	var total time.Duration
	prev := step{DeployEndpoints, 0, 0}
	for n := 0; n < 2*(DeployEndpoints+1); n++ {
		s := deployStep(ScaleDown, n)
		total += s.next
		switch {
		case s.endpoints == DeployEndpoints:
			if prev.endpoints != 0 || s.gen != prev.gen+1 {
				t.Fatalf("step %d: back to %d endpoints from %d (gen %d → %d): want from 0, new addresses", n, s.endpoints, prev.endpoints, prev.gen, s.gen)
			}
		case s.endpoints != prev.endpoints-1 || s.gen != prev.gen:
			t.Fatalf("step %d: %d endpoints after %d (gen %d → %d): want one fewer, same pods", n, s.endpoints, prev.endpoints, prev.gen, s.gen)
		}
		prev = s
	}
	if want := 2 * (99*50*time.Millisecond + 4*time.Second); total != want {
		t.Errorf("two scale-down cycles last %v, want %v", total, want)
	}
	// Rolling: between 100 and 125 endpoints; each step adds one at the window's end or drops one
	// at its start; after a wave the window has moved by 25.
	lo, hi := 0, DeployEndpoints // the window [lo, hi) of addresses
	for n := 0; n < 200; n++ {
		s := deployStep(Rolling, n)
		nlo, nhi := s.gen, s.gen+s.endpoints
		if s.endpoints < DeployEndpoints || s.endpoints > DeployEndpoints+DeployEndpoints/4 {
			t.Fatalf("step %d: %d endpoints, want 100 to 125", n, s.endpoints)
		}
		if !(nlo == lo && nhi == hi+1) && !(nlo == lo+1 && nhi == hi) {
			t.Fatalf("step %d: window [%d, %d) after [%d, %d): want one added at the end or one gone at the start", n, nlo, nhi, lo, hi)
		}
		lo, hi = nlo, nhi
		if (n+1)%50 == 0 && (lo != (n+1)/50*25 || hi-lo != DeployEndpoints) {
			t.Fatalf("after wave %d: window [%d, %d), want [%d, %d)", (n+1)/50, lo, hi, (n+1)/50*25, (n+1)/50*25+DeployEndpoints)
		}
	}
}

func TestParseWorkload(t *testing.T) {
	for _, w := range append(Workloads(), Steady(25)) {
		got, err := ParseWorkload(w.Name)
		if err != nil || got != w {
			t.Errorf("ParseWorkload(%q) = %+v, %v", w.Name, got, err)
		}
	}
	for _, bad := range []string{"", "steady", "steady-0", "steady--1", "burst"} {
		if _, err := ParseWorkload(bad); err == nil {
			t.Errorf("ParseWorkload(%q) accepted", bad)
		}
	}
}

func TestWindowJSON(t *testing.T) {
	in := Window{NetProgP50: Maybe(math.NaN()), NetProgP99: 1.5}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Window
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(out.NetProgP50)) || out.NetProgP99 != 1.5 || !strings.Contains(string(b), `"netProgP50":null`) {
		t.Errorf("%s read back as %+v", b, out)
	}
}
