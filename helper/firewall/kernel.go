package firewall

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/proc"
	"github.com/aegisfw/aegis/helper/rules"
)

// appKey is one entry of the kernel's app map.
type appKey struct {
	exe bpf.ExeKey
	uid uint32
}

// ruleRef names a rule: its path and user.
type ruleRef struct {
	path string
	uid  uint32
}

// kernelEntry is what the engine put in the kernel's app map and why.
type kernelEntry struct {
	app bpf.App
	// rule is the rule the entry enforces; zero for until-quit entries.
	rule ruleRef
	// sha256 is the digest of the executable when the entry came from a
	// verified process (its key is the kernel's); empty when the key was
	// computed from the file at the rule's path (pre-warming).
	sha256 string
	// quit counts the until-quit answers that keep the entry.
	quit int
}

// kernelState mirrors the policy the engine pushed to the kernel.
type kernelState struct {
	ids     map[ruleRef]uint32
	quitIDs map[appKey]uint32
	nextID  uint32
	entries map[appKey]kernelEntry
	dests   map[uint32][]bpf.Dest
	// hostRules are the hostname rules by app id; hosts the addresses
	// pushed for them (see hosts.go).
	hostRules map[uint32]hostRuleSet
	hosts     map[bpf.Dest]hostDest
}

func newKernelState() kernelState {
	return kernelState{
		ids:       map[ruleRef]uint32{},
		quitIDs:   map[appKey]uint32{},
		nextID:    1,
		entries:   map[appKey]kernelEntry{},
		dests:     map[uint32][]bpf.Dest{},
		hostRules: map[uint32]hostRuleSet{},
		hosts:     map[bpf.Dest]hostDest{},
	}
}

// idLocked returns the stable app id of a rule.
func (k *kernelState) idLocked(r ruleRef) uint32 {
	if id, ok := k.ids[r]; ok {
		return id
	}
	id := k.nextID
	k.nextID++
	k.ids[r] = id
	return id
}

func toBPFKey(k apps.Key) bpf.ExeKey {
	return bpf.ExeKey{Ino: k.Ino, CtimeNs: k.CtimeNs, Dev: k.Dev}
}

// toProcKey converts the kernel's exe key into the one proc and apps
// (apps.Key is proc.Key) verify and cache by.
func toProcKey(k bpf.ExeKey) proc.Key {
	return proc.Key{Ino: k.Ino, CtimeNs: k.CtimeNs, Dev: k.Dev}
}

func kernelVerdict(v rules.Verdict) bpf.Verdict {
	if v == rules.Allow {
		return bpf.VerdictAllow
	}
	return bpf.VerdictDeny
}

func kernelProto(p rules.Proto) uint8 {
	switch p {
	case rules.TCP:
		return bpf.ProtoTCP
	case rules.UDP:
		return bpf.ProtoUDP
	}
	return bpf.ProtoAny
}

// kernelDests converts an app's address rules; hostname rules are decided
// in userspace from the DNS cache.
func kernelDests(id uint32, a rules.App) []struct {
	d bpf.Dest
	v bpf.Verdict
} {
	var out []struct {
		d bpf.Dest
		v bpf.Verdict
	}
	add := func(p netip.Prefix, r rules.DestRule) {
		out = append(out, struct {
			d bpf.Dest
			v bpf.Verdict
		}{bpf.Dest{AppID: id, Prefix: p, Port: r.Port, Proto: kernelProto(r.Proto)}, kernelVerdict(r.Verdict)})
	}
	for _, r := range a.Dests {
		switch {
		case r.Host != "":
		case r.Prefix.IsValid():
			add(r.Prefix, r)
		default:
			add(netip.MustParsePrefix("0.0.0.0/0"), r)
			add(netip.MustParsePrefix("::/0"), r)
		}
	}
	return out
}

// kernelApp is the kernel policy of a rule.
func kernelApp(id uint32, a rules.App) bpf.App {
	return bpf.App{ID: id, Verdict: kernelVerdict(a.Verdict), HasDests: len(a.Dests) > 0}
}

// adoptKernelPolicy takes what the kernel's policy maps hold (left by an
// earlier helper in the pinned maps: until-quit answers, hostname
// addresses, rules since removed) into the engine's mirror of them, so
// that the first syncKernel removes whatever the rules in force do not
// want.
func (e *Engine) adoptKernelPolicy() error {
	entries, err := e.dp.Apps()
	if err != nil {
		return err
	}
	dests, err := e.dp.Dests()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := &e.kernel
	for _, a := range entries {
		ak := appKey{a.Exe, a.UID}
		if _, ok := k.entries[ak]; !ok {
			k.entries[ak] = kernelEntry{app: a.App}
		}
	}
	for _, d := range dests {
		if !k.explicitLocked(d.Dest) {
			k.dests[d.Dest.AppID] = append(k.dests[d.Dest.AppID], d.Dest)
		}
	}
	return nil
}

// syncKernel makes the kernel's app and destination maps enforce the
// rules in force: every valid registered file by the key of the file at
// its path (pre-warming), every key learnt from verified processes while
// its rule still names that digest and the file is valid, and the
// until-quit answers of running processes.
func (e *Engine) syncKernel() error {
	snap := e.store.Snapshot()
	byRef := map[ruleRef]rules.App{}
	for _, a := range snap.Effective.Apps {
		byRef[ruleRef{a.Path, a.UID}] = a
	}
	valid := map[string]bool{}
	states := e.reg.Apps()
	for _, st := range states {
		if st.State == apps.Valid {
			valid[st.App.Path] = true
		}
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	k := &e.kernel
	want := map[appKey]kernelEntry{}
	for _, st := range states {
		ref := ruleRef{st.App.Path, st.App.UID}
		a, ok := byRef[ref]
		if !ok || st.State != apps.Valid || st.Key == (apps.Key{}) {
			continue
		}
		want[appKey{toBPFKey(st.Key), a.UID}] = kernelEntry{app: kernelApp(k.idLocked(ref), a), rule: ref}
	}
	for ak, en := range k.entries {
		if en.quit > 0 {
			// An until-quit answer; a rule for the same key prevails
			// but the answer's count is kept.
			if w, ok := want[ak]; ok {
				w.quit = en.quit
				want[ak] = w
			} else {
				want[ak] = en
			}
			continue
		}
		if en.sha256 == "" {
			continue
		}
		a, ok := byRef[en.rule]
		if !ok || a.SHA256 != en.sha256 || !valid[a.Path] {
			continue
		}
		want[ak] = kernelEntry{app: kernelApp(k.idLocked(en.rule), a), rule: en.rule, sha256: en.sha256}
	}
	var (
		errs []error
		// revoked are executables whose allow rule was withdrawn or
		// turned into a deny: the connections they opened while trusted
		// are aborted. (A binary whose hash changed loses its kernel
		// entry but keeps its connections: the running process is still
		// the code that was trusted.)
		revoked []bpf.ExeKey
	)
	for ak, old := range k.entries {
		if _, ok := want[ak]; !ok {
			if err := e.dp.DeleteApp(ak.exe, ak.uid); err != nil {
				errs = append(errs, err)
			}
			delete(k.entries, ak)
			if a, ok := byRef[old.rule]; old.app.Verdict == bpf.VerdictAllow && old.rule != (ruleRef{}) &&
				(!ok || a.Verdict != rules.Allow) {
				revoked = append(revoked, ak.exe)
			}
		}
	}
	for ak, en := range want {
		old, ok := k.entries[ak]
		if ok && old.app == en.app {
			k.entries[ak] = en
			continue
		}
		if err := e.dp.SetApp(ak.exe, ak.uid, en.app); err != nil {
			errs = append(errs, err)
			continue
		}
		k.entries[ak] = en
		if ok && old.app.Verdict == bpf.VerdictAllow && en.app.Verdict != bpf.VerdictAllow {
			revoked = append(revoked, ak.exe)
		}
	}
	errs = append(errs, e.syncDestsLocked(byRef)...)
	errs = append(errs, e.syncHostRulesLocked(byRef)...)
	if len(revoked) > 0 {
		if err := e.dp.Revoke(revoked...); err != nil {
			errs = append(errs, err)
		} else {
			e.log.Info("trust revoked; open connections aborted", "executables", len(revoked))
		}
	}
	return errors.Join(errs...)
}

// syncDestsLocked replaces the pushed destination rules with those of
// the rules in force.
func (e *Engine) syncDestsLocked(byRef map[ruleRef]rules.App) []error {
	k := &e.kernel
	var errs []error
	want := map[uint32]map[bpf.Dest]bpf.Verdict{}
	for ref, a := range byRef {
		if len(a.Dests) == 0 {
			continue
		}
		id := k.idLocked(ref)
		m := map[bpf.Dest]bpf.Verdict{}
		for _, dv := range kernelDests(id, a) {
			if _, dup := m[dv.d]; !dup {
				m[dv.d] = dv.v
			}
		}
		want[id] = m
	}
	for id, ds := range k.dests {
		for _, d := range ds {
			if _, ok := want[id][d]; !ok {
				if err := e.dp.DeleteDest(d); err != nil {
					errs = append(errs, err)
				}
			}
		}
		delete(k.dests, id)
	}
	for id, m := range want {
		for d, v := range m {
			if err := e.dp.SetDest(d, v); err != nil {
				errs = append(errs, err)
				continue
			}
			k.dests[id] = append(k.dests[id], d)
		}
	}
	return errs
}

// trust puts the kernel key of a verified process running a registered
// app into the kernel, so its next connections are decided there.
func (e *Engine) trust(exe bpf.ExeKey, uid uint32, a rules.App, sha string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ref := ruleRef{a.Path, a.UID}
	en := kernelEntry{app: kernelApp(e.kernel.idLocked(ref), a), rule: ref, sha256: sha}
	ak := appKey{exe, a.UID}
	if old, ok := e.kernel.entries[ak]; ok {
		en.quit = old.quit
		if old.app == en.app {
			e.kernel.entries[ak] = en
			return nil
		}
	}
	if err := e.dp.SetApp(exe, a.UID, en.app); err != nil {
		return fmt.Errorf("trust %s: %w", a.Path, err)
	}
	e.kernel.entries[ak] = en
	return nil
}

// destVerdict decides a connection of app a to dst by its destination
// rules, the most specific first (as the kernel orders them), and its
// verdict otherwise. host is the name dst was resolved from, if known.
func destVerdict(a rules.App, dst netip.AddrPort, proto uint8, host string) rules.Verdict {
	best, score := a.Verdict, -1
	addr := dst.Addr().Unmap()
	for _, r := range a.Dests {
		if r.Port != 0 && r.Port != dst.Port() {
			continue
		}
		if p := kernelProto(r.Proto); p != bpf.ProtoAny && p != proto {
			continue
		}
		bits := 0
		switch {
		case r.Host != "":
			if host == "" || !sameHost(r.Host, host) {
				continue
			}
			bits = 129
		case r.Prefix.IsValid():
			if !r.Prefix.Contains(addr) {
				continue
			}
			bits = r.Prefix.Bits()
			if r.Prefix.Addr().Is4() {
				bits += 96
			}
		}
		s := bits * 4
		if r.Port != 0 {
			s += 2
		}
		if r.Proto != rules.ProtoAny {
			s++
		}
		if s > score {
			best, score = r.Verdict, s
		}
	}
	return best
}

func sameHost(a, b string) bool {
	return trimDot(a) == trimDot(b)
}
