package target

import (
	"context"
	"errors"
	"fmt"
	"time"

	"kptune/internal/kpmetrics"
	"kptune/internal/layout"
	"kptune/internal/locate"
	"kptune/internal/probe"
	"kptune/internal/procfs"
)

// Locator says how runners are found.
type Locator string

const (
	ByScan   Locator = "scan"   // the memory scan for the runner's signature
	ByUprobe Locator = "uprobe" // an entry uprobe on the functions that use the runner
	ByBoth   Locator = "both"   // both, which must agree on every runner
	ByAuto   Locator = "auto"   // the scan, and the uprobe where the scan finds no valid runner
)

// ParseLocator checks a --locate value.
func ParseLocator(s string) (Locator, error) {
	switch l := Locator(s); l {
	case ByScan, ByUprobe, ByBoth, ByAuto:
		return l, nil
	}
	return "", fmt.Errorf("unknown locator %q: use auto, scan, uprobe or both", s)
}

// LocateOptions choose the locator and bound the uprobe's capture.
type LocateOptions struct {
	Locator Locator
	Probe   probe.Options
}

// DefaultLocate is the memory scan, falling back to the uprobe.
var DefaultLocate = LocateOptions{Locator: ByAuto, Probe: probe.DefaultOptions}

// confirmGap is how long confirmBuiltin waits between its two readings of a runner's values.
const confirmGap = 500 * time.Millisecond

// scan finds the runners of process p by the memory scan.
func scan(ctx context.Context, p *Process) (locate.Target, []locate.Found, error) {
	t, err := locate.TargetOf(p.PID, p.bin)
	if err != nil {
		return t, nil, err
	}
	found, err := locate.Scan(ctx, t)
	if err != nil {
		return t, nil, err
	}
	if len(found) == 0 {
		if !procfs.Alive(p.PID, p.StartTime) {
			return t, nil, fmt.Errorf("the process exited during the scan: %w", ErrGone)
		}
		return t, nil, fmt.Errorf("%w in its memory (kube-proxy may still be starting: its proxier is built after it reaches the API server and finds its Node)", ErrNoRunner)
	}
	return t, found, nil
}

// locateBy finds the runners of process p with the chosen locator, and says which locator found
// them: "scan", "uprobe" or "scan+uprobe".
func locateBy(ctx context.Context, p *Process, o LocateOptions) (locate.Target, []locate.Found, string, error) {
	if o.Locator == "" {
		o.Locator = ByAuto
	}
	if o.Locator == ByUprobe {
		t, err := locate.TargetOf(p.PID, p.bin)
		if err != nil {
			return t, nil, "", err
		}
		found, err := uprobe(ctx, t, p, o.Probe)
		return t, found, string(ByUprobe), err
	}
	t, scanned, err := scan(ctx, p)
	switch {
	case o.Locator == ByScan:
		return t, scanned, string(ByScan), err
	case o.Locator == ByAuto && err == nil:
		return t, scanned, string(ByScan), nil
	case o.Locator == ByAuto && errors.Is(err, ErrNoRunner):
		found, perr := uprobe(ctx, t, p, o.Probe)
		if perr != nil {
			return t, nil, "", fmt.Errorf("%w; and the uprobe: %w", err, perr)
		}
		return t, found, string(ByUprobe), nil
	case err != nil:
		return t, nil, "", err
	}
	probed, err := uprobe(ctx, t, p, o.Probe)
	if err != nil {
		return t, nil, "", fmt.Errorf("the scan found %d runners, the uprobe none: %w", len(scanned), err)
	}
	if err := agree(scanned, probed); err != nil {
		return t, nil, "", err
	}
	return t, scanned, "scan+uprobe", nil
}

func uprobe(ctx context.Context, t locate.Target, p *Process, o probe.Options) ([]locate.Found, error) {
	c, err := probe.Locate(ctx, t, p.PID, p.Exe(), o)
	if err != nil {
		return nil, err
	}
	return c.Found, nil
}

// agree checks that two locators found the same runners, at the same addresses, with the same values.
func agree(scanned, probed []locate.Found) error {
	byAddr := map[uint64]locate.Found{}
	for _, f := range scanned {
		byAddr[f.Address] = f
	}
	for _, f := range probed {
		s, ok := byAddr[f.Address]
		if !ok {
			return fmt.Errorf("the uprobe found a runner at %#x that the memory scan did not: the locators disagree, nothing will be written", f.Address)
		}
		if s != f {
			return fmt.Errorf("the scan and the uprobe read different values at runner %#x: the locators disagree, nothing will be written", f.Address)
		}
		delete(byAddr, f.Address)
	}
	for a := range byAddr {
		return fmt.Errorf("the memory scan found a runner at %#x that the uprobe did not capture: the locators disagree, nothing will be written", a)
	}
	return nil
}

// periods reads the periods kube-proxy process p configured its proxiers with, from its /configz:
// those of its proxy mode (its --proxy-mode flag, else its configuration's mode, else iptables,
// kube-proxy's default on Linux).
func periods(ctx context.Context, p procfs.Process) (locate.Periods, error) {
	cfg, err := kpmetrics.ForProcess(p.PID, p.Cmdline).Configz(ctx)
	if err != nil {
		return locate.Periods{}, err
	}
	mode := proxyMode(p.Cmdline)
	if mode == "" {
		mode = cfg.Mode()
	}
	if mode == "" {
		mode = "iptables"
	}
	min, ok1 := cfg.Period("minSyncPeriod", mode)
	sync, ok2 := cfg.Period("syncPeriod", mode)
	if !ok1 || !ok2 {
		return locate.Periods{}, fmt.Errorf("no minSyncPeriod and syncPeriod for mode %s in kube-proxy's /configz", mode)
	}
	return locate.Periods{MinSync: min, Sync: sync}, nil
}

// confirmBuiltin checks the built-in layout, used where the binary's type descriptors and DWARF
// cannot be read, against the layout a runner's values give: a contradiction refuses the process;
// values that cannot be read (no /configz) leave the layout Unconfirmed, which set refuses unless
// forced.
func confirmBuiltin(ctx context.Context, p *Process, f locate.Found) error {
	periods, err := p.Periods(ctx)
	if err == nil {
		var l layout.Layout
		l, err = locate.LayoutFromProcess(ctx, p.scan, f.Address, periods, confirmGap)
		if err == nil && !layout.SameFields(l, p.scan.Layout) {
			return fmt.Errorf("the built-in %s layout disagrees with the layout runner %#x's values give (%+v): a build kptune does not know, nothing will be written", p.scan.Layout.Generation, f.Address, l)
		}
	}
	if err != nil {
		p.scan.Layout.Unconfirmed = err.Error()
		return nil
	}
	p.scan.Layout.Confirmed = true
	return nil
}
