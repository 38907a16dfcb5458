package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"kptune/internal/locate"
	"kptune/internal/procfs"
)

// ErrNoCall is returned when no probed function ran in the target while the probes were attached.
var ErrNoCall = errors.New("no trigger while attached")

// Options bound a capture.
type Options struct {
	// Timeout ends a capture that has found no runner.
	Timeout time.Duration
	// Settle is how long to keep listening after the last new runner: a dual-stack kube-proxy has
	// two, triggered together.
	Settle time.Duration
	// Points replaces the points Points computes (tests).
	Points []Point
}

// DefaultOptions suit a kube-proxy under churn: its proxiers are called on every Service or
// EndpointSlice change.
var DefaultOptions = Options{Timeout: 30 * time.Second, Settle: time.Second}

// Capture is a finished capture.
type Capture struct {
	Found   []locate.Found
	Points  []Point
	ABI     ABI
	Hits    uint64        // probe hits in the target while attached
	Samples int           // distinct (function, register, stack word) triples
	Attach  time.Duration // to load the programs and attach them
	First   time.Duration // from attached to the first valid runner
	Elapsed time.Duration // from start to detach
}

// mapKey is the hash map's key: which point, and the two receiver candidates.
type mapKey struct{ Point, Reg, Stack uint64 }

const maxSamples = 4096

// Program returns the BPF program for one point: for the target's thread group only, record the
// receiver register and the word at SP+8 under (point, reg, stack) and count the hit.
func Program(abi ABI, tgid int, point int, mapFD int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // pt_regs
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.JNE.Imm(asm.R0, int32(tgid), "exit"),
		// key at fp-24: point, reg, stack
		// (a 64-bit immediate store does not exist: go through R1)
		asm.Mov.Imm(asm.R1, int32(point)),
		asm.StoreMem(asm.RFP, -24, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R6, abi.RegOff, asm.DWord),
		asm.StoreMem(asm.RFP, -16, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
		asm.LoadMem(asm.R3, asm.R6, abi.SPOff, asm.DWord),
		asm.Add.Imm(asm.R3, int32(abi.PtrSize)),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -8),
		asm.Mov.Imm(asm.R2, 8),
		asm.FnProbeReadUser.Call(), // a fault leaves the zero
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "insert"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Ja.Label("exit"),
		asm.Mov.Imm(asm.R1, 1).WithSymbol("insert"),
		asm.StoreMem(asm.RFP, -32, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -32),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY: a racing insert of the same key loses one count
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),
	}
}

// Session is a set of attached probes and the samples they record. Close detaches them; if kptune
// dies instead, the kernel detaches them with its file descriptors.
type Session struct {
	m     *ebpf.Map
	links []link.Link
}

// Attach loads one program per point and attaches it, at the point's file offset in exe, for the
// thread group tgid.
func Attach(exe string, tgid int, abi ABI, points []Point) (_ *Session, err error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, bpfError("raise the memlock limit", err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "kptune_recv", Type: ebpf.Hash, KeySize: 24, ValueSize: 8, MaxEntries: maxSamples})
	if err != nil {
		return nil, bpfError("create the BPF map", err)
	}
	s := &Session{m: m}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	ex, err := link.OpenExecutable(exe)
	if err != nil {
		return nil, fmt.Errorf("open %s for probing: %w", exe, err)
	}
	for i, p := range points {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "kptune_probe", Type: ebpf.Kprobe, License: "Dual MIT/GPL",
			Instructions: Program(abi, tgid, i, m.FD()),
		})
		if err != nil {
			return nil, bpfError("load the BPF program", err)
		}
		l, err := ex.Uprobe(eventName(p.Func), prog, &link.UprobeOptions{Address: p.Offset})
		prog.Close() // the link holds it
		if err != nil {
			return nil, bpfError("attach a uprobe to "+p.Func, err)
		}
		s.links = append(s.links, l)
	}
	return s, nil
}

// Samples calls fn for every sample recorded so far, with its hit count.
func (s *Session) Samples(fn func(Sample, uint64)) error {
	var k mapKey
	var n uint64
	it := s.m.Iterate()
	for it.Next(&k, &n) {
		fn(Sample{Point: k.Point, Reg: k.Reg, Stack: k.Stack}, n)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the BPF map: %w", err)
	}
	return nil
}

// Close detaches the probes.
func (s *Session) Close() {
	for _, l := range s.links {
		l.Close()
	}
	s.m.Close()
}

// Locate attaches the probes to the executable of process pid (exe: its /proc/PID/exe), collects
// receivers until the capture is complete, detaches, and returns the runners that validate in t.
func Locate(ctx context.Context, t locate.Target, pid int, exe string, o Options) (Capture, error) {
	start := time.Now()
	c := Capture{}
	var err error
	if c.ABI, err = ABIFor(t.Binary.ELF.Machine, t.Binary.GoMinor); err != nil {
		return c, err
	}
	c.Points = o.Points
	if c.Points == nil {
		if c.Points, err = Points(t.Binary, t.Layout.Generation); err != nil {
			return c, err
		}
	}
	sess, err := Attach(exe, pid, c.ABI, c.Points)
	if err != nil {
		return c, err
	}
	defer sess.Close()
	c.Attach = time.Since(start)
	attached := time.Now()

	seen := map[Sample]bool{}
	byAddr := map[uint64]bool{}
	var last time.Time
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-tick.C:
		}
		var hits uint64
		err := sess.Samples(func(k Sample, n uint64) {
			hits += n
			if seen[k] {
				return
			}
			seen[k] = true
			for _, f := range resolve(t, c.Points, c.ABI, k) {
				if !byAddr[f.Address] {
					byAddr[f.Address] = true
					c.Found = append(c.Found, f)
					last = time.Now()
					if len(c.Found) == 1 {
						c.First = last.Sub(attached)
					}
				}
			}
		})
		if err != nil {
			return c, err
		}
		c.Hits, c.Samples = hits, len(seen)
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return c, fmt.Errorf("process %d exited while probed", pid)
		}
		switch {
		case len(c.Found) > 0 && time.Since(last) >= o.Settle:
			c.Elapsed = time.Since(start)
			return c, nil
		case len(c.Found) == 0 && time.Since(attached) >= o.Timeout:
			c.Elapsed = time.Since(start)
			if c.Hits == 0 {
				return c, fmt.Errorf("%w: none of %s ran in %v (kube-proxy had nothing to sync: a quiet cluster); use the memory scan (--locate=scan) or retry while Services or endpoints change",
					ErrNoCall, funcNames(c.Points), o.Timeout)
			}
			return c, fmt.Errorf("%d calls captured in %v, none led to a valid sync runner: use the memory scan (--locate=scan)", c.Hits, o.Timeout)
		}
	}
}

// resolve turns one sample into the runners it leads to.
func resolve(t locate.Target, points []Point, abi ABI, k Sample) []locate.Found {
	if k.Point >= uint64(len(points)) {
		return nil
	}
	p := points[k.Point]
	for _, recv := range abi.Receivers(k) {
		if recv == 0 {
			continue
		}
		var addrs []uint64
		switch {
		case p.Via != nil:
			addrs = viaMeta(t, p, recv)
		default:
			addrs = runnerOf(t, recv, p.Field)
		}
		var out []locate.Found
		for _, a := range addrs {
			if f, ok := locate.Validate(t, a); ok {
				out = append(out, f)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// viaMeta follows a metaProxier's two proxy.Provider interfaces (itab, data) to their proxiers'
// runners; the itab's type descriptor says which proxier, and so where its syncRunner is.
func viaMeta(t locate.Target, p Point, meta uint64) []uint64 {
	var out []uint64
	for _, off := range p.Via {
		tab, ok1 := word(t, meta+uint64(off))
		data, ok2 := word(t, meta+uint64(off)+8)
		if !ok1 || !ok2 || tab == 0 || data == 0 {
			continue
		}
		typ, ok := word(t, tab+8)
		if !ok {
			continue
		}
		field := int64(Search) // the dynamic type's name is unreadable: search the proxier
		if name, err := t.Binary.TypeName(typ - t.Bias); err == nil {
			if field, ok = p.Proxiers[name]; !ok {
				continue // not a proxier kptune knows
			}
		}
		out = append(out, runnerOf(t, data, field)...)
	}
	return out
}

// runnerOf returns the candidate runners a receiver leads to: itself, the pointer at a known
// offset, or (Search) every word of the proxier that points at a valid runner.
func runnerOf(t locate.Target, recv uint64, field int64) []uint64 {
	switch {
	case field == Self:
		return []uint64{recv}
	case field >= 0:
		if a, ok := word(t, recv+uint64(field)); ok {
			return []uint64{a}
		}
		return nil
	}
	buf := make([]byte, searchProxier)
	if t.Mem.ReadMem(buf, recv) != nil {
		return nil
	}
	for off := 0; off+8 <= len(buf); off += 8 {
		a := binary.LittleEndian.Uint64(buf[off:])
		if _, ok := locate.Validate(t, a); ok {
			return []uint64{a}
		}
	}
	return nil
}

func word(t locate.Target, addr uint64) (uint64, bool) {
	var w [8]byte
	if t.Mem.ReadMem(w[:], addr) != nil {
		return 0, false
	}
	return binary.LittleEndian.Uint64(w[:]), true
}

var notEventChar = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// eventName is a tracefs-safe name for a probe (used only where the kernel lacks the uprobe PMU).
func eventName(fn string) string {
	i := strings.LastIndex(fn, "/")
	return "kptune_" + strings.Trim(notEventChar.ReplaceAllString(fn[i+1:], "_"), "_")
}

func funcNames(ps []Point) string {
	var names []string
	for _, p := range ps {
		names = append(names, p.Func[strings.LastIndex(p.Func, "/")+1:])
	}
	return strings.Join(names, ", ")
}

// Capabilities the probing locator needs, as measured on Linux 6.18: loading the program and its
// map needs CAP_BPF (CAP_SYS_ADMIN implies it); opening the uprobe perf event needs CAP_SYS_ADMIN
// itself (the kernel's uprobe PMU checks for it; CAP_PERFMON is not enough); resolving
// /proc/PID/exe and reading the target's memory need CAP_SYS_PTRACE.
const (
	capSysPtrace = 19
	capSysAdmin  = 21
	capBPF       = 39
)

var capNames = map[int]string{capSysPtrace: "CAP_SYS_PTRACE", capSysAdmin: "CAP_SYS_ADMIN", capBPF: "CAP_BPF"}

// effective reads the process's effective capabilities.
func effective() (uint64, bool) {
	v, err := procfs.StatusField("/proc/self/status", "CapEff")
	if err != nil {
		return 0, false
	}
	caps, err := strconv.ParseUint(v, 16, 64)
	return caps, err == nil
}

// bpfError names the missing capability when the kernel refuses one step of attaching.
func bpfError(what string, err error) error {
	if !errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%s: %w", what, err)
	}
	need := []int{capBPF}
	if strings.HasPrefix(what, "attach") {
		need = []int{capSysAdmin}
	}
	var missing []string
	if caps, ok := effective(); ok {
		for _, c := range need {
			implied := c == capBPF && caps&(1<<capSysAdmin) != 0
			if caps&(1<<c) == 0 && !implied {
				missing = append(missing, capNames[c])
			}
		}
	}
	if len(missing) == 0 {
		return fmt.Errorf("%s: %v: the probing locator needs CAP_SYS_ADMIN and CAP_SYS_PTRACE (or root)", what, err)
	}
	return fmt.Errorf("%s: %v: missing %s; the probing locator needs CAP_SYS_ADMIN and CAP_SYS_PTRACE (or root)", what, err, strings.Join(missing, ", "))
}
