package firewall

import (
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/aegisfw/aegis/bpf"
)

// DNS cache bounds: an answer names an address for at least minTTL (so
// the connection that follows a zero-TTL answer still gets its name) and
// at most maxTTL.
const (
	minTTL = 10 * time.Second
	maxTTL = time.Hour
)

// dnsKey keys hostnames by user: one user's lookups never name another
// user's connections.
type dnsKey struct {
	uid  uint32
	addr netip.Addr
}

type dnsEntry struct {
	host    string
	expires time.Time
}

// dnsCache maps the addresses in captured DNS answers to the names that
// were asked for. It is bounded; expired entries go first when full.
type dnsCache struct {
	max int
	m   map[dnsKey]dnsEntry
}

func newDNSCache(max int) dnsCache {
	return dnsCache{max: max, m: map[dnsKey]dnsEntry{}}
}

func (c *dnsCache) add(k dnsKey, host string, ttl time.Duration, now time.Time) {
	ttl = min(max(ttl, minTTL), maxTTL)
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for kk, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, kk)
			}
		}
		for kk := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, kk)
		}
	}
	c.m[k] = dnsEntry{host: host, expires: now.Add(ttl)}
}

func (c *dnsCache) lookup(k dnsKey, now time.Time) string {
	e, ok := c.m[k]
	if !ok {
		return ""
	}
	if now.After(e.expires) {
		delete(c.m, k)
		return ""
	}
	return e.host
}

// dnsRecord is one address a DNS answer gave for a name.
type dnsRecord struct {
	host string
	addr netip.Addr
	ttl  time.Duration
}

// parseDNS returns the addresses of a DNS answer with the name that was
// asked for (CNAME chains end at that name). TCP messages carry a 2-byte
// length prefix.
func parseDNS(payload []byte, proto uint8) ([]dnsRecord, error) {
	if proto == bpf.ProtoTCP && len(payload) >= 2 {
		payload = payload[2:]
	}
	var p dnsmessage.Parser
	h, err := p.Start(payload)
	if err != nil {
		return nil, err
	}
	if !h.Response || h.RCode != dnsmessage.RCodeSuccess {
		return nil, nil
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, err
	}
	host := trimDot(q.Name.String())
	var out []dnsRecord
	for {
		rh, err := p.AnswerHeader()
		if err == dnsmessage.ErrSectionDone {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		ttl := time.Duration(rh.TTL) * time.Second
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return out, err
			}
			out = append(out, dnsRecord{host, netip.AddrFrom4(r.A), ttl})
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return out, err
			}
			out = append(out, dnsRecord{host, netip.AddrFrom16(r.AAAA).Unmap(), ttl})
		default:
			if err := p.SkipAnswer(); err != nil {
				return out, err
			}
		}
	}
}

func trimDot(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// onDNS records the names in a DNS answer a guarded socket received.
func (e *Engine) onDNS(a bpf.DNSAnswer) {
	recs, err := parseDNS(a.Payload, a.Proto)
	if err != nil {
		e.log.Debug("unparsable DNS answer", "pid", a.PID, "err", err)
	}
	if len(recs) == 0 {
		return
	}
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range recs {
		e.dns.add(dnsKey{a.UID, r.addr}, r.host, r.ttl, now)
		e.pushHostLocked(a.UID, r.host, r.addr, r.ttl, now)
	}
}

// hostLocked returns the name uid looked dst up by, if known.
func (e *Engine) hostLocked(uid uint32, dst netip.Addr) string {
	return e.dns.lookup(dnsKey{uid, dst.Unmap()}, time.Now())
}
