//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ExeKey is the kernel's identity of a running executable: inode, ctime
// in nanoseconds and the kernel's device number (major<<20 | minor) of
// task->mm->exe_file. Rewriting the file changes ctime; replacing it
// changes the inode.
type ExeKey = aegisExeKey

// ExeKeyOf returns the key the kernel computes for a file with this stat.
// Keys taken from events are authoritative; this one serves pre-warming
// and tests (on btrfs, st_dev differs from the kernel's s_dev).
func ExeKeyOf(st *unix.Stat_t) ExeKey {
	return ExeKey{
		Ino:     st.Ino,
		CtimeNs: uint64(st.Ctim.Sec)*1e9 + uint64(st.Ctim.Nsec),
		Dev:     unix.Major(st.Dev)<<20 | unix.Minor(st.Dev),
	}
}

// Verdict is a decision about a connection.
type Verdict uint8

// Verdicts, as the kernel stores them.
const (
	VerdictNone    = Verdict(aegisVerdictVERDICT_NONE)
	VerdictAllow   = Verdict(aegisVerdictVERDICT_ALLOW)
	VerdictDeny    = Verdict(aegisVerdictVERDICT_DENY)
	VerdictPending = Verdict(aegisVerdictVERDICT_PENDING)
)

func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictAllow:
		return "allow"
	case VerdictDeny:
		return "deny"
	case VerdictPending:
		return "pending"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Mode is the kernel's treatment of unknown apps.
type Mode uint8

// Modes.
const (
	// ModeEnforce holds unknown apps and reports them.
	ModeEnforce = Mode(aegisModeMODE_ENFORCE)
	// ModeLearning lets unknown apps pass and reports them once per
	// destination.
	ModeLearning = Mode(aegisModeMODE_LEARNING)
)

// FailMode is what the kernel does with unknown apps while the helper
// misses its heartbeat.
type FailMode uint8

// Fail modes.
const (
	FailDeny  = FailMode(aegisFailModeFAIL_DENY)
	FailHold  = FailMode(aegisFailModeFAIL_HOLD)
	FailAllow = FailMode(aegisFailModeFAIL_ALLOW)
)

// Protocols a destination rule can name; ProtoAny matches both.
const (
	ProtoAny uint8 = 0
	ProtoTCP uint8 = unix.IPPROTO_TCP
	ProtoUDP uint8 = unix.IPPROTO_UDP
)

// AnyUID makes an app rule apply to every user.
const AnyUID = ^uint32(0)

// Config holds the knobs the kernel reads at every decision.
type Config struct {
	Mode     Mode
	FailMode FailMode
	// HeartbeatTimeout is how long the helper may miss its beat before
	// the fail mode applies; zero disables the fail mode.
	HeartbeatTimeout time.Duration
	// SynCount and RTOMax tune held TCP sockets so that their SYN is
	// retransmitted at least every RTOMax for as long as the user takes.
	SynCount int
	RTOMax   time.Duration
	// SynRTO is the first SYN retransmission timeout of held sockets
	// (the kernel's is 1 s): an allow given at once completes after it.
	SynRTO time.Duration
	// CaptureDNS copies DNS answers to userspace.
	CaptureDNS bool
}

// DefaultConfig is enforce mode, refusing unknown apps when the helper
// has been silent for 5 s, holding SYNs for minutes: retransmitted after
// 200 ms at first, then at least every second.
func DefaultConfig() Config {
	return Config{
		Mode:             ModeEnforce,
		FailMode:         FailDeny,
		HeartbeatTimeout: 5 * time.Second,
		SynCount:         127,
		RTOMax:           time.Second,
		SynRTO:           200 * time.Millisecond,
		CaptureDNS:       true,
	}
}

// SetConfig writes c for the kernel to use from the next decision on.
func (d *Datapath) SetConfig(c Config) error {
	kc := aegisConfig{
		HeartbeatTimeoutNs: uint64(c.HeartbeatTimeout.Nanoseconds()),
		Syncnt:             int32(c.SynCount),
		RtoMaxMs:           int32(c.RTOMax.Milliseconds()),
		SynRtoMs:           uint32(c.SynRTO.Milliseconds()),
		Mode:               uint8(c.Mode),
		FailMode:           uint8(c.FailMode),
	}
	if c.CaptureDNS {
		kc.CaptureDns = 1
	}
	if err := d.objs.Cfg.Put(uint32(0), kc); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

// Config returns the configuration the kernel uses now.
func (d *Datapath) Config() (Config, error) {
	var kc aegisConfig
	if err := d.objs.Cfg.Lookup(uint32(0), &kc); err != nil {
		return Config{}, fmt.Errorf("read datapath config: %w", err)
	}
	return Config{
		Mode:             Mode(kc.Mode),
		FailMode:         FailMode(kc.FailMode),
		HeartbeatTimeout: time.Duration(kc.HeartbeatTimeoutNs),
		SynCount:         int(kc.Syncnt),
		RTOMax:           time.Duration(kc.RtoMaxMs) * time.Millisecond,
		SynRTO:           time.Duration(kc.SynRtoMs) * time.Millisecond,
		CaptureDNS:       kc.CaptureDns != 0,
	}, nil
}

// Beat records that the helper is alive; the kernel applies the fail
// mode when beats stop for longer than Config.HeartbeatTimeout.
func (d *Datapath) Beat() error {
	if err := d.objs.Heartbeat.Put(uint32(0), monotonicNow()); err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	return nil
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// App is the kernel's policy for one executable.
type App struct {
	// ID groups the destination rules of this app; every ExeKey of the
	// same app (after an update, for example) shares it. Nonzero.
	ID uint32
	// Verdict applies to destinations no destination rule names.
	// VerdictNone holds such connections and asks, like an unknown app.
	Verdict Verdict
	// HasDests tells the kernel to look up destination rules for ID.
	HasDests bool
}

// SetApp trusts or refuses exe when run by uid (or AnyUID).
func (d *Datapath) SetApp(exe ExeKey, uid uint32, a App) error {
	if a.ID == 0 {
		return errors.New("set app: app id 0 is reserved")
	}
	info := aegisAppInfo{AppId: a.ID, Verdict: uint8(a.Verdict)}
	if a.HasDests {
		info.HasDests = 1
	}
	if err := d.objs.Apps.Put(aegisAppKey{Exe: exe, Uid: uid}, info); err != nil {
		return fmt.Errorf("set app %d: %w", a.ID, err)
	}
	return nil
}

// DeleteApp forgets exe for uid: its next connection is unknown again.
// Sockets it already opened keep their verdict; Abort them to revoke.
func (d *Datapath) DeleteApp(exe ExeKey, uid uint32) error {
	err := d.objs.Apps.Delete(aegisAppKey{Exe: exe, Uid: uid})
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete app: %w", err)
	}
	return nil
}

// Dest is a destination rule of one app. A single-address Prefix is an
// exact rule; a shorter one is a CIDR rule. Port 0 and ProtoAny match
// any port and protocol. The most specific rule wins: exact before CIDR,
// a longer prefix before a shorter one, a named port and protocol before
// wildcards.
type Dest struct {
	AppID  uint32
	Prefix netip.Prefix
	Port   uint16
	Proto  uint8
}

// mapped returns p's address and bit length in the 16-byte form the
// kernel uses (IPv4 as ::ffff:a.b.c.d).
func mapped(p netip.Prefix) ([16]byte, int, error) {
	if !p.IsValid() {
		return [16]byte{}, 0, errors.New("invalid prefix")
	}
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return netip.AddrFrom16(p.Addr().As16()).As16(), bits, nil
}

// SetDest adds or replaces a destination rule.
func (d *Datapath) SetDest(r Dest, v Verdict) error {
	addr, bits, err := mapped(r.Prefix)
	if err != nil {
		return fmt.Errorf("set destination rule: %w", err)
	}
	if bits == 128 {
		err = d.objs.Dests.Put(aegisDestKey{AppId: r.AppID, Port: r.Port, Proto: r.Proto, Addr: addr}, uint8(v))
	} else {
		err = d.objs.Cidrs.Put(aegisCidrKey{Prefixlen: uint32(64 + bits), AppId: r.AppID, Port: r.Port, Proto: r.Proto, Addr: addr}, uint8(v))
	}
	if err != nil {
		return fmt.Errorf("set destination rule for app %d: %w", r.AppID, err)
	}
	return nil
}

// DeleteDest removes a destination rule.
func (d *Datapath) DeleteDest(r Dest) error {
	addr, bits, err := mapped(r.Prefix)
	if err != nil {
		return fmt.Errorf("delete destination rule: %w", err)
	}
	if bits == 128 {
		err = d.objs.Dests.Delete(aegisDestKey{AppId: r.AppID, Port: r.Port, Proto: r.Proto, Addr: addr})
	} else {
		err = d.objs.Cidrs.Delete(aegisCidrKey{Prefixlen: uint32(64 + bits), AppId: r.AppID, Port: r.Port, Proto: r.Proto, Addr: addr})
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete destination rule for app %d: %w", r.AppID, err)
	}
	return nil
}

// Resolve decides one held request once: VerdictAllow lets the held
// socket through on its next packet; VerdictDeny aborts it (a blocked
// connect() returns ECONNABORTED) and drops its held datagrams.
func (d *Datapath) Resolve(ev Event, v Verdict) error {
	if v != VerdictAllow && v != VerdictDeny {
		return fmt.Errorf("resolve: verdict must be allow or deny, not %v", v)
	}
	if err := d.objs.Decisions.Put(ev.Cookie, uint8(v)); err != nil {
		return fmt.Errorf("record decision: %w", err)
	}
	if err := d.objs.Pending.Delete(ev.pendingKey()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear pending request: %w", err)
	}
	if v == VerdictDeny && (ev.Kind == KindConnect) {
		return d.Abort(ev.Cookie)
	}
	return nil
}

// Abort destroys the sockets with these cookies: blocked calls return
// ECONNABORTED, established flows are reset.
func (d *Datapath) Abort(cookies ...uint64) error {
	for _, c := range cookies {
		if err := d.objs.Kill.Put(c, uint8(1)); err != nil {
			return fmt.Errorf("mark socket %d for abort: %w", c, err)
		}
	}
	return d.runKillIterators()
}

// Revoke aborts every TCP and UDP socket held open by a process running
// one of exes: connections an app opened while it was trusted end when
// its trust ends. Call it after DeleteApp or a deny, so that the app
// cannot open new ones.
func (d *Datapath) Revoke(exes ...ExeKey) error {
	if len(exes) == 0 {
		return nil
	}
	d.killMu.Lock()
	defer d.killMu.Unlock()
	for _, k := range exes {
		if err := d.objs.Revoke.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("mark executable for revocation: %w", err)
		}
	}
	defer func() {
		for _, k := range exes {
			_ = d.objs.Revoke.Delete(k)
		}
	}()
	if err := d.runIterators(d.objs.AegisCollectSockets); err != nil {
		return fmt.Errorf("collect sockets to revoke: %w", err)
	}
	return d.runIterators(d.objs.AegisKillTcp, d.objs.AegisKillUdp)
}

// Counters are the datapath's event and drop counts since it was loaded.
type Counters struct {
	Events       uint64 // ring buffer records written
	RingBufFull  uint64 // records lost to a full ring buffer
	HeldDrops    uint64 // packets of held sockets dropped
	Denied       uint64 // connects and sends refused
	FailMode     uint64 // decisions taken by the fail mode
	NoStorage    uint64 // sockets the kernel could not give state
	DNSAnswers   uint64 // DNS answers captured
	AbortedConns uint64 // sockets destroyed on request
}

// Counters sums the per-CPU counters.
func (d *Datapath) Counters() (Counters, error) {
	var sum [aegisCounterCOUNTER_MAX]uint64
	for i := range sum {
		var per []uint64
		if err := d.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			sum[i] += v
		}
	}
	return Counters{
		Events:       sum[aegisCounterCOUNTER_EVENTS],
		RingBufFull:  sum[aegisCounterCOUNTER_RINGBUF_FULL],
		HeldDrops:    sum[aegisCounterCOUNTER_HELD_DROPS],
		Denied:       sum[aegisCounterCOUNTER_DENIED],
		FailMode:     sum[aegisCounterCOUNTER_FAILMODE],
		NoStorage:    sum[aegisCounterCOUNTER_NO_STORAGE],
		DNSAnswers:   sum[aegisCounterCOUNTER_DNS],
		AbortedConns: sum[aegisCounterCOUNTER_KILLED],
	}, nil
}

// ReportAgain lets the kernel report ev's app and destination again. In
// learning mode each (app, destination) is reported once; a consumer that
// could not use a report (the process exited before it was verified) asks
// for the next one.
func (d *Datapath) ReportAgain(ev Event) error {
	k := aegisReportKey{Exe: ev.Exe, Addr: ev.raw, Port: ev.Dst.Port(), Proto: ev.Proto}
	if err := d.objs.Reported.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear report of %v: %w", ev.Dst, err)
	}
	return nil
}

// AppEntry is one executable's entry in the kernel policy.
type AppEntry struct {
	Exe ExeKey
	UID uint32
	App App
}

// Apps lists the kernel's app policy, including entries an earlier
// process left in pinned maps.
func (d *Datapath) Apps() ([]AppEntry, error) {
	var (
		k   aegisAppKey
		v   aegisAppInfo
		out []AppEntry
	)
	it := d.objs.Apps.Iterate()
	for it.Next(&k, &v) {
		out = append(out, AppEntry{Exe: k.Exe, UID: k.Uid, App: App{ID: v.AppId, Verdict: Verdict(v.Verdict), HasDests: v.HasDests != 0}})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("list apps: %w", err)
	}
	return out, nil
}

// DestEntry is one destination rule in the kernel policy.
type DestEntry struct {
	Dest    Dest
	Verdict Verdict
}

// Dests lists the kernel's destination rules, exact and CIDR.
func (d *Datapath) Dests() ([]DestEntry, error) {
	var out []DestEntry
	var (
		dk aegisDestKey
		v  uint8
	)
	it := d.objs.Dests.Iterate()
	for it.Next(&dk, &v) {
		out = append(out, DestEntry{Dest{AppID: dk.AppId, Prefix: unmapped(dk.Addr, 128), Port: dk.Port, Proto: dk.Proto}, Verdict(v)})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("list destination rules: %w", err)
	}
	var ck aegisCidrKey
	it = d.objs.Cidrs.Iterate()
	for it.Next(&ck, &v) {
		out = append(out, DestEntry{Dest{AppID: ck.AppId, Prefix: unmapped(ck.Addr, int(ck.Prefixlen)-64), Port: ck.Port, Proto: ck.Proto}, Verdict(v)})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("list CIDR rules: %w", err)
	}
	return out, nil
}

// unmapped turns the kernel's 16-byte address and bit length back into a
// prefix, IPv4 where the address is v4-mapped.
func unmapped(addr [16]byte, bits int) netip.Prefix {
	a := netip.AddrFrom16(addr)
	if a.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), bits-96)
	}
	return netip.PrefixFrom(a, bits)
}
