package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/rules"
)

// The dbusapi.Backend methods. The Server has validated and authorized
// their arguments; they still refuse what they cannot apply with errors
// matching dbusapi.ErrInvalidArgument or dbusapi.ErrNotFound.

// Status returns the firewall's state at a glance.
func (e *Engine) Status(context.Context) (dbusapi.Status, error) {
	n := len(e.store.Snapshot().Effective.Apps)
	e.mu.Lock()
	defer e.mu.Unlock()
	return dbusapi.Status{
		Mode:     dbusapi.Mode(e.settings.Mode),
		Tampered: e.tampered,
		Apps:     uint32(n),
		Prompts:  uint32(len(e.prompts)),
		Learned:  uint32(len(e.learned)),
	}, nil
}

// Counters returns the engine's totals with the datapath's: Denied adds
// the kernel's refusals by rule, RingDrops the events lost to a full ring
// buffer (each recovered from the pending map).
func (e *Engine) Counters(context.Context) (dbusapi.Counters, error) {
	c, err := e.dp.Counters()
	if err != nil {
		return dbusapi.Counters{}, fmt.Errorf("counters: %w", err)
	}
	return dbusapi.Counters{
		Allowed:   e.counts.allowed.Load(),
		Denied:    e.counts.denied.Load() + c.Denied,
		Held:      e.counts.held.Load(),
		TimedOut:  e.counts.timedOut.Load(),
		Tampering: e.counts.tampering.Load(),
		RingDrops: c.RingBufFull,
	}, nil
}

// SetMode persists the mode and applies it to the kernel.
func (e *Engine) SetMode(_ context.Context, m dbusapi.Mode) error {
	if m != dbusapi.Enforce && m != dbusapi.Learning {
		return fmt.Errorf("set mode %q: %w", m, dbusapi.ErrInvalidArgument)
	}
	return e.updateRules(func(s *rules.Set) error {
		s.Settings.Mode = rules.Mode(m)
		return nil
	})
}

// Apps lists the registered apps with the state of their files.
func (e *Engine) Apps(context.Context) ([]dbusapi.App, error) {
	states := e.reg.Apps()
	out := make([]dbusapi.App, 0, len(states))
	for _, st := range states {
		out = append(out, dbusapi.App{
			Path:      st.App.Path,
			SHA256:    st.App.SHA256,
			UID:       st.App.UID,
			Verdict:   dbusapi.Verdict(st.App.Verdict),
			HashState: hashState(st.State),
			Package:   st.App.Package,
			FirstSeen: unixOrZero(st.App.FirstSeen),
			LastSeen:  unixOrZero(st.App.LastSeen),
		})
	}
	return out, nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// SetVerdict adds or replaces the rule for path and uid with the current
// file's hash, keeping the rule's destinations and history.
func (e *Engine) SetVerdict(_ context.Context, path string, uid uint32, v dbusapi.Verdict) error {
	if v != dbusapi.Allow && v != dbusapi.Deny {
		return fmt.Errorf("set verdict %q: %w", v, dbusapi.ErrInvalidArgument)
	}
	sha, err := hashPath(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && v == dbusapi.Deny:
		sha = "" // a deny rule may name a path whatever its content
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("set verdict: %s: %w", path, dbusapi.ErrNotFound)
	case err != nil:
		return fmt.Errorf("set verdict: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	return e.updateRules(func(s *rules.Set) error {
		upsert(s, rules.App{Path: path, SHA256: sha, UID: uid, Verdict: ruleVerdict(v), FirstSeen: now, LastSeen: now})
		return nil
	})
}

func ruleVerdict(v dbusapi.Verdict) rules.Verdict {
	if v == dbusapi.Allow {
		return rules.Allow
	}
	return rules.Deny
}

// upsert replaces the app with a's path and user, keeping its launcher,
// package, destinations and first sighting, or appends a.
func upsert(s *rules.Set, a rules.App) {
	for i := range s.Apps {
		old := &s.Apps[i]
		if old.Path != a.Path || old.UID != a.UID {
			continue
		}
		a.Parent, a.Dests = old.Parent, old.Dests
		if a.Package == "" {
			a.Package = old.Package
		}
		if !old.FirstSeen.IsZero() {
			a.FirstSeen = old.FirstSeen
		}
		a.Source = old.Source
		*old = a
		return
	}
	s.Apps = append(s.Apps, a)
}

// hashPath returns the SHA-256 of the regular file at path.
func hashPath(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum, err := apps.HashFile(f)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return fmt.Sprintf("%x", sum), nil
}

// Forget deletes the rule for path and uid.
func (e *Engine) Forget(_ context.Context, path string, uid uint32) error {
	return e.updateRules(func(s *rules.Set) error {
		for i, a := range s.Apps {
			if a.Path == path && a.UID == uid {
				s.Apps = append(s.Apps[:i], s.Apps[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("forget %s for uid %d: %w", path, uid, dbusapi.ErrNotFound)
	})
}

// Rehash registers the current hash of the file at path and persists it.
func (e *Engine) Rehash(_ context.Context, path string) (dbusapi.Rehashed, error) {
	e.wmu.Lock()
	res, err := e.reg.Rehash(path)
	e.wmu.Unlock()
	if errors.Is(err, apps.ErrNotRegistered) || errors.Is(err, fs.ErrNotExist) {
		return dbusapi.Rehashed{}, fmt.Errorf("rehash %s: %w: %w", path, dbusapi.ErrNotFound, err)
	}
	if err != nil {
		return dbusapi.Rehashed{}, fmt.Errorf("rehash %s: %w", path, err)
	}
	if err := e.persistRehash([]apps.RehashResult{res}); err != nil {
		return dbusapi.Rehashed{}, err
	}
	return rehashed(res), nil
}

// RehashAll rehashes every registered path and persists the new hashes;
// paths that failed are left out of the result and logged.
func (e *Engine) RehashAll(ctx context.Context) ([]dbusapi.Rehashed, error) {
	e.wmu.Lock()
	res, err := e.reg.RehashAll(ctx)
	e.wmu.Unlock()
	var ok []apps.RehashResult
	for _, r := range res {
		if r.Err != nil {
			e.log.Warn("rehash", "exe", r.Path, "err", r.Err)
			continue
		}
		ok = append(ok, r)
	}
	if perr := e.persistRehash(ok); perr != nil {
		return nil, perr
	}
	if err != nil {
		return nil, fmt.Errorf("rehash all: %w", err)
	}
	out := make([]dbusapi.Rehashed, 0, len(ok))
	for _, r := range ok {
		out = append(out, rehashed(r))
	}
	return out, nil
}

func rehashed(r apps.RehashResult) dbusapi.Rehashed {
	out := dbusapi.Rehashed{Path: r.Path, OldSHA256: r.Old, NewSHA256: r.New}
	if r.Origin.Verdict == apps.PackageMatch {
		out.Package = r.Origin.Package
	}
	return out
}

// persistRehash writes the rehashed apps to the rule file. Apps that
// come from drop-ins are not the helper's to write and stay as they are.
func (e *Engine) persistRehash(rs []apps.RehashResult) error {
	if len(rs) == 0 {
		return nil
	}
	return e.updateRules(func(s *rules.Set) error {
		for _, r := range rs {
			for _, a := range r.Apps {
				for i := range s.Apps {
					if s.Apps[i].Path == a.Path && s.Apps[i].UID == a.UID {
						s.Apps[i].SHA256 = a.SHA256
						if a.Package != "" {
							s.Apps[i].Package = a.Package
						}
					}
				}
			}
		}
		return nil
	})
}

// Learned lists the apps seen in learning mode.
func (e *Engine) Learned(context.Context) ([]dbusapi.Learned, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.learnedLocked(), nil
}

// AdoptLearned turns the learned apps at paths (for every user they were
// seen for) into allow rules. It changes nothing when a path was not
// learned.
func (e *Engine) AdoptLearned(_ context.Context, paths []string) error {
	e.mu.Lock()
	var adopt []*learnedApp
	for _, p := range paths {
		n := 0
		for k, l := range e.learned {
			if k.path == p {
				adopt = append(adopt, l)
				n++
			}
		}
		if n == 0 {
			e.mu.Unlock()
			return fmt.Errorf("adopt %s: not learned: %w", p, dbusapi.ErrNotFound)
		}
	}
	e.mu.Unlock()
	for _, l := range adopt {
		if l.sha == "" {
			return fmt.Errorf("adopt %s: its executable could not be hashed: %w", l.path, dbusapi.ErrInvalidArgument)
		}
	}
	now := time.Now().UTC().Truncate(time.Second)
	err := e.updateRules(func(s *rules.Set) error {
		for _, l := range adopt {
			upsert(s, rules.App{Path: l.path, SHA256: l.sha, UID: l.uid, Verdict: rules.Allow,
				FirstSeen: l.first.UTC().Truncate(time.Second), LastSeen: now})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, l := range adopt {
		a := rules.App{Path: l.path, SHA256: l.sha, UID: l.uid, Verdict: rules.Allow}
		if err := e.trust(l.exe, l.uid, a, l.sha); err != nil {
			e.log.Error("push app to kernel", "exe", l.path, "err", err)
		}
	}
	e.mu.Lock()
	for _, l := range adopt {
		delete(e.learned, learnKey{l.path, l.uid})
	}
	e.mu.Unlock()
	e.log.Info("learned apps adopted", "count", len(adopt))
	return nil
}

// Rules returns the rules in force (the rule file merged with drop-ins).
func (e *Engine) Rules(context.Context) ([]dbusapi.Rule, error) {
	set := e.store.Snapshot().Effective
	out := make([]dbusapi.Rule, 0, len(set.Apps))
	for _, a := range set.Apps {
		r := dbusapi.Rule{Path: a.Path, SHA256: a.SHA256, Verdict: dbusapi.Verdict(a.Verdict), UID: a.UID, Parent: a.Parent, Dests: []dbusapi.DestRule{}}
		for _, d := range a.Dests {
			dr := dbusapi.DestRule{Host: d.Host, Port: d.Port, Proto: string(d.Proto), Verdict: dbusapi.Verdict(d.Verdict)}
			if d.Prefix.IsValid() {
				if d.Prefix.IsSingleIP() {
					dr.Prefix = d.Prefix.Addr().String()
				} else {
					dr.Prefix = d.Prefix.String()
				}
			}
			r.Dests = append(r.Dests, dr)
		}
		out = append(out, r)
	}
	return out, nil
}

// ExportRules returns the rule file's content in canonical form.
func (e *Engine) ExportRules(context.Context) (string, error) {
	b, err := rules.Encode(e.store.Snapshot().Main)
	if err != nil {
		return "", fmt.Errorf("export rules: %w", err)
	}
	return string(b), nil
}

// ImportRules replaces the rule file with a validated one.
func (e *Engine) ImportRules(_ context.Context, text string) error {
	set, err := rules.Parse("imported rules", []byte(text))
	if err != nil {
		return fmt.Errorf("import rules: %w: %w", dbusapi.ErrInvalidArgument, err)
	}
	return e.updateRules(func(s *rules.Set) error {
		*s = *set
		return nil
	})
}

// Prompts returns every open prompt.
func (e *Engine) Prompts(context.Context) ([]dbusapi.Prompt, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]dbusapi.Prompt, 0, len(e.prompts))
	for _, p := range e.prompts {
		out = append(out, p.msg)
	}
	return out, nil
}

// Answer decides an open prompt: once decides its held requests, until-quit
// also the process until it exits, always writes a rule for its user.
func (e *Engine) Answer(_ context.Context, a dbusapi.Answer) error {
	if a.Verdict != dbusapi.Allow && a.Verdict != dbusapi.Deny {
		return fmt.Errorf("answer %q: %w", a.Verdict, dbusapi.ErrInvalidArgument)
	}
	e.mu.Lock()
	p := e.prompts[a.ID]
	e.mu.Unlock()
	if p == nil {
		return fmt.Errorf("prompt %s: %w", a.ID, dbusapi.ErrNotFound)
	}
	e.log.Info("prompt answered", "prompt", a.ID, "verdict", a.Verdict, "scope", a.Scope, "uid", a.UID, "exe", p.path)
	switch a.Scope {
	case dbusapi.Once:
	case dbusapi.UntilQuit:
		if err := e.addQuit(p, a.Verdict); err != nil {
			// The process is gone or cannot be watched: the answer
			// still decides the held requests.
			e.log.Warn("until-quit rule not kept", "prompt", a.ID, "pid", p.msg.PID, "err", err)
		}
	case dbusapi.Always, dbusapi.AlwaysAllUsers:
		app := rules.App{Path: p.path, SHA256: p.sha, UID: p.msg.UID, Verdict: ruleVerdict(a.Verdict)}
		if a.Scope == dbusapi.AlwaysAllUsers {
			app.UID = rules.AnyUser
		}
		now := time.Now().UTC().Truncate(time.Second)
		app.FirstSeen, app.LastSeen = now, now
		if err := e.updateRules(func(s *rules.Set) error { upsert(s, app); return nil }); err != nil {
			return fmt.Errorf("answer %s: %w", a.ID, err)
		}
		if err := e.trust(p.key.exe, p.msg.UID, app, p.sha); err != nil {
			e.log.Error("push app to kernel", "exe", p.path, "err", err)
		}
	default:
		return fmt.Errorf("answer scope %q: %w", a.Scope, dbusapi.ErrInvalidArgument)
	}
	if !e.settle(a.ID, a.Verdict, howPrompt) {
		return fmt.Errorf("prompt %s: already decided: %w", a.ID, dbusapi.ErrNotFound)
	}
	if a.Scope != dbusapi.Once {
		// Other prompts about the same executable and user (other
		// destinations) are decided by the same answer.
		e.mu.Lock()
		var more []string
		for id, q := range e.prompts {
			if q.key.exe == p.key.exe && q.key.uid == p.key.uid &&
				(a.Scope != dbusapi.UntilQuit || q.msg.PID == p.msg.PID && q.start == p.start) {
				more = append(more, id)
			}
		}
		e.mu.Unlock()
		for _, id := range more {
			e.settle(id, a.Verdict, howPrompt)
		}
	}
	return nil
}

// Flows returns the flow table, oldest first.
func (e *Engine) Flows(context.Context) ([]dbusapi.Flow, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.flows.list(), nil
}

// updateRules applies fn to a copy of the rule file's set, writes it,
// and brings the registry, the kernel and the settings in line.
func (e *Engine) updateRules(fn func(*rules.Set) error) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	set := e.store.Snapshot().Main
	if err := fn(set); err != nil {
		return err
	}
	if err := e.store.Write(set); err != nil {
		var pe *rules.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("write rules: %w: %w", dbusapi.ErrInvalidArgument, err)
		}
		return fmt.Errorf("write rules: %w", err)
	}
	snap := e.store.Snapshot()
	if err := e.reg.Replace(snap.Effective.Apps); err != nil {
		e.log.Error("register apps", "err", err)
	}
	e.mu.Lock()
	old := e.settings
	e.settings = snap.Effective.Settings
	running := e.ctx != nil
	e.mu.Unlock()
	var errs []error
	if running && (old.Mode != e.settings.Mode || old.FailMode != e.settings.FailMode) {
		if err := e.dp.SetConfig(e.kernelConfig(snap.Effective.Settings)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := e.syncKernel(); err != nil {
		errs = append(errs, err)
	}
	if old.Mode != snap.Effective.Settings.Mode {
		e.log.Info("mode changed", "mode", snap.Effective.Settings.Mode)
		e.signal(func(s Signals) error { return s.ModeChanged(dbusapi.Mode(snap.Effective.Settings.Mode)) })
	}
	e.signal(func(s Signals) error { return s.RulesChanged() })
	e.signal(func(s Signals) error { return s.AppsChanged() })
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("apply rules: %w", err)
	}
	return nil
}
