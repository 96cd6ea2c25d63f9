package firewall

import (
	"net/netip"
	"time"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/rules"
)

// Hostname rules reach the kernel as exact-address destination rules for
// the addresses a captured DNS answer gave for the name, kept for the
// answer's TTL (bounded by minTTL and maxTTL): the app's connections to
// them are then decided in the kernel like any other destination rule.
// An explicit address rule with the same address, port and protocol wins.

// hostRuleSet is the hostname rules of one app in the kernel.
type hostRuleSet struct {
	uid   uint32 // rules.AnyUser or the rule's user
	rules []rules.DestRule
}

// hostDest is a destination pushed for a hostname rule.
type hostDest struct {
	expires time.Time
	timer   *time.Timer
}

// syncHostRulesLocked records the hostname rules of the rules in force and
// withdraws pushed addresses of apps that no longer have any.
func (e *Engine) syncHostRulesLocked(byRef map[ruleRef]rules.App) []error {
	k := &e.kernel
	k.hostRules = map[uint32]hostRuleSet{}
	for ref, a := range byRef {
		var hs []rules.DestRule
		for _, d := range a.Dests {
			if d.Host != "" {
				hs = append(hs, d)
			}
		}
		if len(hs) > 0 {
			k.hostRules[k.idLocked(ref)] = hostRuleSet{uid: a.UID, rules: hs}
		}
	}
	var errs []error
	for d, hd := range k.hosts {
		if _, ok := k.hostRules[d.AppID]; ok {
			continue
		}
		hd.timer.Stop()
		delete(k.hosts, d)
		if !k.explicitLocked(d) {
			if err := e.dp.DeleteDest(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// explicitLocked reports whether d is also an address rule of the rules.
func (k *kernelState) explicitLocked(d bpf.Dest) bool {
	for _, x := range k.dests[d.AppID] {
		if x == d {
			return true
		}
	}
	return false
}

// pushHostLocked puts addr, which uid resolved host to, into the kernel
// for every hostname rule naming host.
func (e *Engine) pushHostLocked(uid uint32, host string, addr netip.Addr, ttl time.Duration, now time.Time) {
	k := &e.kernel
	ttl = min(max(ttl, minTTL), maxTTL)
	for id, hr := range k.hostRules {
		if hr.uid != rules.AnyUser && hr.uid != uid {
			continue
		}
		for _, r := range hr.rules {
			if !sameHost(r.Host, host) {
				continue
			}
			d := bpf.Dest{AppID: id, Prefix: netip.PrefixFrom(addr, addr.BitLen()), Port: r.Port, Proto: kernelProto(r.Proto)}
			if k.explicitLocked(d) {
				continue
			}
			if err := e.dp.SetDest(d, kernelVerdict(r.Verdict)); err != nil {
				e.log.Error("push hostname rule", "host", host, "addr", addr, "err", err)
				continue
			}
			expires := now.Add(ttl)
			if hd, ok := k.hosts[d]; ok {
				if !expires.After(hd.expires) {
					continue
				}
				hd.timer.Stop()
			}
			k.hosts[d] = hostDest{expires: expires, timer: time.AfterFunc(ttl, func() { e.expireHost(d, expires) })}
			e.log.Debug("hostname rule pushed", "host", host, "addr", addr, "app_id", id, "ttl", ttl)
		}
	}
}

// withdrawHostsLocked takes every pushed hostname address out of the
// kernel: their TTLs are not kept while no helper runs.
func (e *Engine) withdrawHostsLocked() {
	k := &e.kernel
	for d, hd := range k.hosts {
		hd.timer.Stop()
		delete(k.hosts, d)
		if !k.explicitLocked(d) {
			if err := e.dp.DeleteDest(d); err != nil {
				e.log.Warn("withdraw hostname rule", "addr", d.Prefix, "err", err)
			}
		}
	}
}

// expireHost withdraws d when its TTL ran out and no later answer renewed it.
func (e *Engine) expireHost(d bpf.Dest, expires time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := &e.kernel
	if hd, ok := k.hosts[d]; !ok || !hd.expires.Equal(expires) {
		return
	}
	delete(k.hosts, d)
	if k.explicitLocked(d) {
		return
	}
	if err := e.dp.DeleteDest(d); err != nil {
		e.log.Warn("withdraw hostname rule", "addr", d.Prefix, "err", err)
	}
}
