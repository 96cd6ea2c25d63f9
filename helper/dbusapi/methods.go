package dbusapi

import (
	"fmt"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/godbus/dbus/v5"
)

// Each interface is a separate type, so the exported methods of each are
// exactly that interface's D-Bus methods (checked against introspect.xml
// by a test). Every method follows the same order: validate, then
// authorize (read-only methods skip this), then call the Backend.

type firewallObj struct{ s *Server }

func (o *firewallObj) GetStatus(msg dbus.Message) (Status, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	st, err := o.s.backend.Status(c.ctx)
	st.Agents = uint32(o.s.Agents())
	return st, o.s.fail(c, "GetStatus", err)
}

func (o *firewallObj) GetCounters(msg dbus.Message) (Counters, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	cs, err := o.s.backend.Counters(c.ctx)
	return cs, o.s.fail(c, "GetCounters", err)
}

func (o *firewallObj) SetMode(msg dbus.Message, mode string) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "SetMode", func() error {
		m, err := validateMode(mode)
		if err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionSetMode); err != nil {
			return err
		}
		return o.s.backend.SetMode(c.ctx, m)
	}())
}

type appsObj struct{ s *Server }

func (o *appsObj) ListApps(msg dbus.Message) ([]App, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	apps, err := func() ([]App, error) {
		uid, err := o.s.authz.UnixUser(c.ctx, c.sender)
		if err != nil {
			return nil, err
		}
		all, err := o.s.backend.Apps(c.ctx)
		out := []App{}
		for _, a := range all {
			if visible(uid, a.UID) {
				out = append(out, a)
			}
		}
		return out, err
	}()
	return apps, o.s.fail(c, "ListApps", err)
}

func (o *appsObj) setVerdict(msg dbus.Message, method, path string, uid uint32, v Verdict) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, method, func() error {
		if err := validatePath(path); err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
		return o.s.backend.SetVerdict(c.ctx, path, uid, v)
	}())
}

func (o *appsObj) Allow(msg dbus.Message, path string, uid uint32) *dbus.Error {
	return o.setVerdict(msg, "Allow", path, uid, Allow)
}

func (o *appsObj) Deny(msg dbus.Message, path string, uid uint32) *dbus.Error {
	return o.setVerdict(msg, "Deny", path, uid, Deny)
}

func (o *appsObj) Forget(msg dbus.Message, path string, uid uint32) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "Forget", func() error {
		if err := validatePath(path); err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
		return o.s.backend.Forget(c.ctx, path, uid)
	}())
}

func (o *appsObj) Rehash(msg dbus.Message, path string) (Rehashed, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	var r Rehashed
	err := func() error {
		if err := validatePath(path); err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionRehash); err != nil {
			return err
		}
		var err error
		r, err = o.s.backend.Rehash(c.ctx, path)
		return err
	}()
	return r, o.s.fail(c, "Rehash", err)
}

func (o *appsObj) RehashAll(msg dbus.Message) ([]Rehashed, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	rs := []Rehashed{}
	err := func() error {
		if err := o.s.authorize(c, authz.ActionRehash); err != nil {
			return err
		}
		got, err := o.s.backend.RehashAll(c.ctx)
		rs = append(rs, got...)
		return err
	}()
	return rs, o.s.fail(c, "RehashAll", err)
}

func (o *appsObj) ListLearned(msg dbus.Message) ([]Learned, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	out := []Learned{}
	err := func() error {
		uid, err := o.s.authz.UnixUser(c.ctx, c.sender)
		if err != nil {
			return err
		}
		all, err := o.s.backend.Learned(c.ctx)
		for _, l := range all {
			if visible(uid, l.UID) {
				out = append(out, l)
			}
		}
		return err
	}()
	return out, o.s.fail(c, "ListLearned", err)
}

func (o *appsObj) AdoptLearned(msg dbus.Message, paths []string) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "AdoptLearned", func() error {
		if err := validatePaths(paths); err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
		return o.s.backend.AdoptLearned(c.ctx, paths)
	}())
}

type rulesObj struct{ s *Server }

func (o *rulesObj) Show(msg dbus.Message) ([]Rule, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	out := []Rule{}
	err := func() error {
		uid, err := o.s.authz.UnixUser(c.ctx, c.sender)
		if err != nil {
			return err
		}
		all, err := o.s.backend.Rules(c.ctx)
		for _, r := range all {
			if visible(uid, r.UID) {
				out = append(out, r)
			}
		}
		return err
	}()
	return out, o.s.fail(c, "Show", err)
}

func (o *rulesObj) Export(msg dbus.Message) (string, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	var toml string
	err := func() error {
		if err := o.s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
		var err error
		toml, err = o.s.backend.ExportRules(c.ctx)
		return err
	}()
	return toml, o.s.fail(c, "Export", err)
}

func (o *rulesObj) Import(msg dbus.Message, toml string) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "Import", func() error {
		if err := validateTOML(toml); err != nil {
			return err
		}
		if err := o.s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
		return o.s.backend.ImportRules(c.ctx, toml)
	}())
}

type promptsObj struct{ s *Server }

func (o *promptsObj) RegisterAgent(msg dbus.Message, path dbus.ObjectPath) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "RegisterAgent", o.s.registerAgent(c, path))
}

func (o *promptsObj) UnregisterAgent(msg dbus.Message, path dbus.ObjectPath) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "UnregisterAgent", o.s.unregisterAgent(c, path))
}

func (o *promptsObj) ListPrompts(msg dbus.Message) ([]Prompt, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	out := []Prompt{}
	err := func() error {
		uid, err := o.s.authz.UnixUser(c.ctx, c.sender)
		if err != nil {
			return err
		}
		all, err := o.s.backend.Prompts(c.ctx)
		for _, p := range all {
			if uid == 0 || p.UID == uid {
				out = append(out, p)
			}
		}
		return err
	}()
	return out, o.s.fail(c, "ListPrompts", err)
}

func (o *promptsObj) Answer(msg dbus.Message, id, verdict, scope string) *dbus.Error {
	c, cancel := o.s.begin(msg)
	defer cancel()
	return o.s.fail(c, "Answer", o.s.answer(c, id, verdict, scope))
}

// answer checks an Answer call: valid arguments, a trusted agent
// executable, a caller allowed to decide about the prompted process, and
// the polkit action for the scope.
func (s *Server) answer(c call, id, verdict, scope string) error {
	if err := validateID(id); err != nil {
		return err
	}
	v, err := validateVerdict(verdict)
	if err != nil {
		return err
	}
	sc, err := validateScope(scope)
	if err != nil {
		return err
	}
	uid, err := s.authz.UnixUser(c.ctx, c.sender)
	if err != nil {
		return err
	}
	if _, _, err := s.requireTrustedAgent(c, uid); err != nil {
		return err
	}
	prompts, err := s.backend.Prompts(c.ctx)
	if err != nil {
		return err
	}
	var p *Prompt
	for i := range prompts {
		if prompts[i].ID == id {
			p = &prompts[i]
			break
		}
	}
	if p == nil {
		return fmt.Errorf("prompt %s: %w", id, ErrNotFound)
	}
	switch {
	case uid == 0 || p.UID == uid:
	case p.UID == 0:
		// Root-owned processes are decided by administrators.
		if err := s.authorize(c, authz.ActionModifyRules); err != nil {
			return err
		}
	default:
		s.log.Warn("answer for another user's process refused", "sender", c.sender, "uid", uid, "prompt", id, "owner", p.UID)
		return fmt.Errorf("prompt %s is about a process of uid %d: %w", id, p.UID, ErrNotAuthorized)
	}
	action := authz.ActionAnswerPrompt
	if sc == Always || sc == AlwaysAllUsers {
		action = authz.ActionModifyRules
	}
	if err := s.authorize(c, action); err != nil {
		return err
	}
	return s.backend.Answer(c.ctx, Answer{ID: id, Verdict: v, Scope: sc, UID: uid})
}

type flowsObj struct{ s *Server }

func (o *flowsObj) ListFlows(msg dbus.Message) ([]Flow, *dbus.Error) {
	c, cancel := o.s.begin(msg)
	defer cancel()
	out := []Flow{}
	err := func() error {
		uid, err := o.s.authz.UnixUser(c.ctx, c.sender)
		if err != nil {
			return err
		}
		all, err := o.s.backend.Flows(c.ctx)
		for _, f := range all {
			if uid == 0 || f.UID == uid {
				out = append(out, f)
			}
		}
		return err
	}()
	return out, o.s.fail(c, "ListFlows", err)
}
