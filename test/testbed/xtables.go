package testbed

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"kptune/internal/netns"
)

// The legacy (x_tables) interface iptables-legacy-save reads: IPT_SO_GET_INFO gives a table's size,
// IPT_SO_GET_ENTRIES its rules as one blob of struct ipt_entry, each with its target. Reading the
// blob and walking it costs milliseconds where `iptables -S CHAIN` parses and prints the whole
// table (about 0.3 s of CPU at 5000 Services × 10 endpoints) under the xtables lock that kube-proxy's
// iptables-restore waits for.
const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES
	// struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
	iptGetinfoSize = 84
	// struct ipt_get_entries: name[32], size, then the entries at 8-byte alignment.
	iptGetEntriesHeader = 40
	// struct ipt_entry: ipt_ip (84 bytes), nfcache, target_offset (u16 at 88), next_offset (u16 at
	// 90), comefrom, counters; 112 bytes before its matches.
	iptEntryTargetOffset = 88
	iptEntryNextOffset   = 90
	// struct xt_entry_target: target_size (u16), name[29], revision; its data follows at 32.
	xtTargetName = 2
	xtTargetData = 32
)

// xtJumps reports whether chain from of table (nat, filter, ...) in the network namespace ns has a
// rule jumping to chain to, reading the kernel's legacy x_tables, and the CPU time that took. A
// chain that does not exist jumps nowhere.
func xtJumps(ns, table, from, to string) (jumps bool, cpu time.Duration, err error) {
	err = netns.ForName(ns).Do(func() error {
		t0 := threadCPU()
		defer func() { cpu = threadCPU() - t0 }()
		blob, hooks, err := xtEntries(table)
		if err != nil {
			return fmt.Errorf("read the %s table in %s: %w", table, ns, err)
		}
		jumps, err = jumpsIn(blob, hooks, from, to)
		return err
	})
	return jumps, cpu, err
}

// threadCPU is the CPU time the calling OS thread has used (lock the goroutine to it first), to
// the nanosecond: getrusage's split into user and system time is sampled at clock ticks.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// xtEntries returns the entries of a legacy x_tables table (IPv4) and the offsets where its
// built-in chains start.
func xtEntries(table string) ([]byte, []uint32, error) {
	if len(table) >= 32 {
		return nil, nil, fmt.Errorf("table name %q too long", table)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, nil, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	info := make([]byte, iptGetinfoSize)
	copy(info, table)
	if err := getsockopt(fd, iptSoGetInfo, info); err != nil {
		return nil, nil, fmt.Errorf("IPT_SO_GET_INFO: %w (no legacy %s table?)", err, table)
	}
	// The table may grow between the two calls (kube-proxy restores it at any moment): the kernel
	// then refuses the size (EAGAIN), and the size is read again.
	for try := 0; ; try++ {
		size := binary.NativeEndian.Uint32(info[80:])
		buf := make([]byte, iptGetEntriesHeader+int(size))
		copy(buf, table)
		binary.NativeEndian.PutUint32(buf[32:], size)
		err := getsockopt(fd, iptSoGetEntries, buf)
		if err == nil {
			// valid_hooks at 32, hook_entry[5] at 36.
			var hooks []uint32
			for h := 0; h < 5; h++ {
				if binary.NativeEndian.Uint32(info[32:])&(1<<h) != 0 {
					hooks = append(hooks, binary.NativeEndian.Uint32(info[36+4*h:]))
				}
			}
			return buf[iptGetEntriesHeader:], hooks, nil
		}
		if err != unix.EAGAIN || try == 10 {
			return nil, nil, fmt.Errorf("IPT_SO_GET_ENTRIES: %w", err)
		}
		if err := getsockopt(fd, iptSoGetInfo, info); err != nil {
			return nil, nil, fmt.Errorf("IPT_SO_GET_INFO: %w", err)
		}
	}
}

func getsockopt(fd, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_IP, uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// jumpsIn walks a table's entries. A user-defined chain starts with an entry whose target is
// ERROR, holding the chain's name; the chain's rules follow it. A jump is a standard target (empty
// name) whose verdict, when not negative, is the offset of the rule it jumps to: iptables makes it
// the first rule after the chain's head. Built-in chains have no head: they start at hooks.
func jumpsIn(blob []byte, hooks []uint32, from, to string) (bool, error) {
	heads := map[uint32]string{} // offset of a chain's first rule → its name
	var targets []uint32         // offsets jumped to from chain from
	chain := ""
	for off := 0; off < len(blob); {
		if slices.Contains(hooks, uint32(off)) {
			chain = ""
		}
		if off+iptEntryNextOffset+2 > len(blob) {
			return false, fmt.Errorf("x_tables entry at %d: truncated", off)
		}
		toff := int(binary.NativeEndian.Uint16(blob[off+iptEntryTargetOffset:]))
		next := int(binary.NativeEndian.Uint16(blob[off+iptEntryNextOffset:]))
		if next == 0 || off+next > len(blob) || toff+xtTargetData+4 > next {
			return false, fmt.Errorf("x_tables entry at %d: bad offsets %d, %d", off, toff, next)
		}
		t := blob[off+toff : off+next]
		name := string(bytes.TrimRight(t[xtTargetName:xtTargetName+29], "\x00"))
		switch name {
		case "ERROR":
			chain = string(bytes.TrimRight(t[xtTargetData:min(len(t), xtTargetData+32)], "\x00"))
			heads[uint32(off+next)] = chain
		case "":
			if v := int32(binary.NativeEndian.Uint32(t[xtTargetData:])); chain == from && v >= 0 {
				targets = append(targets, uint32(v))
			}
		}
		off += next
	}
	for _, t := range targets {
		if heads[t] == to {
			return true, nil
		}
	}
	return false, nil
}
