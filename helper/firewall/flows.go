package firewall

import (
	"sync/atomic"
	"time"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/dbusapi"
)

// How a flow's verdict was reached.
const (
	howRule         = "rule"
	howPrompt       = "prompt"
	howLearning     = "learning"
	howFailMode     = "fail-mode"
	howTimeout      = "timeout"
	howNoAgent      = "no-agent"
	howUnverifiable = "unverified"
)

// flowTable is a ring of the latest connection records.
type flowTable struct {
	ring []dbusapi.Flow
	next int
	full bool
}

func newFlowTable(n int) flowTable { return flowTable{ring: make([]dbusapi.Flow, n)} }

func (t *flowTable) add(f dbusapi.Flow) {
	t.ring[t.next] = f
	t.next++
	if t.next == len(t.ring) {
		t.next, t.full = 0, true
	}
}

// list returns the records, oldest first.
func (t *flowTable) list() []dbusapi.Flow {
	if !t.full {
		return append([]dbusapi.Flow(nil), t.ring[:t.next]...)
	}
	out := make([]dbusapi.Flow, 0, len(t.ring))
	out = append(out, t.ring[t.next:]...)
	return append(out, t.ring[:t.next]...)
}

// counts are the engine's own totals.
type counts struct {
	allowed, denied, held, timedOut, tampering atomic.Uint64
}

func protoName(p uint8) string {
	switch p {
	case bpf.ProtoTCP:
		return "tcp"
	case bpf.ProtoUDP:
		return "udp"
	}
	return ""
}

// recordLocked adds a decided request to the flow table and the counts.
func (e *Engine) recordLocked(ev bpf.Event, exe string, v dbusapi.Verdict, how string) {
	if v == dbusapi.Allow {
		e.counts.allowed.Add(1)
	} else {
		e.counts.denied.Add(1)
	}
	e.flows.add(dbusapi.Flow{
		Cookie:  ev.Cookie,
		PID:     ev.PID,
		UID:     ev.UID,
		Exe:     exe,
		Addr:    ev.Dst.Addr().String(),
		Port:    ev.Dst.Port(),
		Host:    e.hostLocked(ev.UID, ev.Dst.Addr()),
		Proto:   protoName(ev.Proto),
		Verdict: v,
		Reason:  how,
		Start:   startUnix(ev.Time),
	})
}

// startUnix converts a CLOCK_MONOTONIC timestamp of the kernel to Unix
// seconds.
func startUnix(mono uint64) int64 {
	now := time.Now()
	d := time.Duration(monotonicNow() - int64(mono))
	if d < 0 || mono == 0 {
		return now.Unix()
	}
	return now.Add(-d).Unix()
}
