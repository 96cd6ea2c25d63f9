//go:build linux

package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// Kind says which hook reported a connection.
type Kind uint8

// Event kinds.
const (
	KindConnect = Kind(aegisEventKindEVENT_CONNECT) // connect(), TCP Fast Open, connected UDP
	KindSendmsg = Kind(aegisEventKindEVENT_SENDMSG) // sendto()/sendmsg() with an address
	KindSocket  = Kind(aegisEventKindEVENT_SOCKET)  // a raw, ICMP or other inet socket
)

// Reason says how the kernel reached an event's verdict.
type Reason uint8

// Reasons.
const (
	ReasonRule     = Reason(aegisReasonREASON_RULE)
	ReasonPending  = Reason(aegisReasonREASON_PENDING)
	ReasonLearning = Reason(aegisReasonREASON_LEARNING)
	ReasonFailMode = Reason(aegisReasonREASON_FAILMODE)
	ReasonDecision = Reason(aegisReasonREASON_DECISION)
)

func (r Reason) String() string {
	switch r {
	case ReasonRule:
		return "rule"
	case ReasonPending:
		return "pending"
	case ReasonLearning:
		return "learning"
	case ReasonFailMode:
		return "fail-mode"
	case ReasonDecision:
		return "decision"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Event is a connection attempt the kernel reported: a held request of an
// unknown app, an app passed in learning mode, or a fail-mode decision.
type Event struct {
	Kind   Kind
	Cookie uint64 // socket cookie, unique per boot
	// Time is CLOCK_MONOTONIC nanoseconds of the attempt.
	Time uint64
	// ProcessStart is the process start time in ns since boot, to be
	// compared with /proc/<pid>/stat before trusting PID.
	ProcessStart uint64
	Exe          ExeKey
	PID, TID     uint32 // thread group and thread ids
	UID, GID     uint32
	Comm         string
	// Family is the socket's address family (unix.AF_INET or AF_INET6).
	Family uint16
	// Dst is the destination; IPv4 destinations of AF_INET6 sockets
	// (v4-mapped) are unmapped.
	Dst     netip.AddrPort
	Proto   uint8
	Verdict Verdict
	Reason  Reason
	// Reconciled marks events recovered from the pending map rather than
	// read from the ring buffer (after an overflow or a restart).
	Reconciled bool

	raw [16]byte // destination as the kernel keyed it
}

func (e Event) pendingKey() aegisPendingKey {
	return aegisPendingKey{Cookie: e.Cookie, Addr: e.raw, Port: e.Dst.Port(), Proto: e.Proto}
}

func eventFrom(k *aegisConnEvent) Event {
	comm := make([]byte, 0, len(k.Comm))
	for _, c := range k.Comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	return Event{
		Kind:         Kind(k.Kind),
		Cookie:       k.Cookie,
		Time:         k.TsNs,
		ProcessStart: k.StartTimeNs,
		Exe:          k.Exe,
		PID:          k.Tgid,
		TID:          k.Tid,
		UID:          k.Uid,
		GID:          k.Gid,
		Comm:         string(comm),
		Family:       k.Family,
		Dst:          netip.AddrPortFrom(netip.AddrFrom16(k.Daddr).Unmap(), k.Dport),
		Proto:        k.Proto,
		Verdict:      Verdict(k.Verdict),
		Reason:       Reason(k.Reason),
		raw:          k.Daddr,
	}
}

// DNSAnswer is a DNS message received by a guarded socket.
type DNSAnswer struct {
	Cookie  uint64
	Time    uint64
	PID     uint32 // 0 when the socket predates the datapath
	UID     uint32
	Exe     ExeKey
	Proto   uint8
	Payload []byte // the DNS message (TCP: with its 2-byte length prefix)
}

// Handlers receive what Watch reads. Either may be nil.
type Handlers struct {
	Connection func(Event)
	DNS        func(DNSAnswer)
}

// Pending returns every request the kernel holds now.
func (d *Datapath) Pending() ([]Event, error) {
	var (
		k   aegisPendingKey
		v   aegisConnEvent
		out []Event
	)
	it := d.objs.Pending.Iterate()
	for it.Next(&k, &v) {
		ev := eventFrom(&v)
		ev.Reconciled = true
		out = append(out, ev)
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("iterate pending requests: %w", err)
	}
	return out, nil
}

// Watch beats the heartbeat every interval and delivers events until ctx
// ends. It first drains what the ring buffer holds and every request in
// the pending map (a backlog left while no helper ran), and reconciles
// from the pending map again whenever the kernel counts a full ring
// buffer, so no held request goes unseen. A request can thus be delivered
// more than once; consumers key requests by cookie and destination.
func (d *Datapath) Watch(ctx context.Context, interval time.Duration, h Handlers) error {
	if err := d.Beat(); err != nil {
		return err
	}
	lost, err := d.Counters()
	if err != nil {
		return err
	}
	if err := d.reconcile(h); err != nil {
		return err
	}

	errc := make(chan error, 1)
	go func() { errc <- d.readLoop(h) }()

	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Flush wakes the reader, which returns once it has read what
			// the ring holds.
			if err := d.ring.Flush(); err != nil {
				return fmt.Errorf("stop event reader: %w", err)
			}
			<-errc
			return ctx.Err()
		case err := <-errc:
			return err
		case <-t.C:
			if err := d.Beat(); err != nil {
				return err
			}
			c, err := d.Counters()
			if err != nil {
				return err
			}
			if c.RingBufFull != lost.RingBufFull {
				d.log.Warn("event ring buffer overflowed; reconciling from pending requests",
					"lost", c.RingBufFull-lost.RingBufFull)
				lost = c
				if err := d.reconcile(h); err != nil {
					return err
				}
			}
		}
	}
}

func (d *Datapath) reconcile(h Handlers) error {
	evs, err := d.Pending()
	if err != nil {
		return err
	}
	if h.Connection != nil {
		for _, ev := range evs {
			h.Connection(ev)
		}
	}
	return nil
}

func (d *Datapath) readLoop(h Handlers) error {
	var rec ringbuf.Record
	for {
		if err := d.ring.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrFlushed) {
				return nil
			}
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return errors.New("datapath closed while watching")
			}
			return fmt.Errorf("read event ring buffer: %w", err)
		}
		if err := d.dispatch(rec.RawSample, h); err != nil {
			d.log.Warn("malformed datapath event", "err", err)
		}
	}
}

func (d *Datapath) dispatch(b []byte, h Handlers) error {
	if len(b) < 4 {
		return fmt.Errorf("record of %d bytes", len(b))
	}
	switch binary.NativeEndian.Uint32(b) {
	case uint32(aegisEventKindEVENT_CONNECT), uint32(aegisEventKindEVENT_SENDMSG), uint32(aegisEventKindEVENT_SOCKET):
		var k aegisConnEvent
		if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &k); err != nil {
			return fmt.Errorf("decode connection event: %w", err)
		}
		if h.Connection != nil {
			h.Connection(eventFrom(&k))
		}
	case uint32(aegisEventKindEVENT_DNS):
		var k aegisDnsEvent
		if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &k); err != nil {
			return fmt.Errorf("decode DNS event: %w", err)
		}
		n := min(int(k.Len), len(k.Payload))
		if h.DNS != nil {
			h.DNS(DNSAnswer{
				Cookie: k.Cookie, Time: k.TsNs, PID: k.Tgid, UID: k.Uid, Exe: k.Exe,
				Proto: k.Proto, Payload: bytes.Clone(k.Payload[:n]),
			})
		}
	default:
		return fmt.Errorf("unknown record kind %d", binary.NativeEndian.Uint32(b))
	}
	return nil
}
