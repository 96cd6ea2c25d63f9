package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/proc"
	"github.com/aegisfw/aegis/helper/rules"
)

// reqKey identifies one held request the way the kernel keys it.
type reqKey struct {
	cookie uint64
	dst    netip.AddrPort
	proto  uint8
}

// promptKey is what prompts coalesce on: one app, one user, one
// destination.
type promptKey struct {
	exe   bpf.ExeKey
	uid   uint32
	dst   netip.AddrPort
	proto uint8
}

// prompt is a question to a user about held requests.
type prompt struct {
	key   promptKey
	msg   dbusapi.Prompt
	path  string
	sha   string
	start uint64 // boot-clock start of the process msg.PID
	reqs  []bpf.Event
	timer *time.Timer
}

// maxDecided bounds the memory of recently decided requests, which keeps
// a late duplicate (from reconciliation) from being asked about again.
const maxDecided = 4096

func reqKeyOf(ev bpf.Event) reqKey { return reqKey{ev.Cookie, ev.Dst, ev.Proto} }

// onConnection receives datapath events; it must return quickly.
func (e *Engine) onConnection(ev bpf.Event) {
	switch {
	case ev.Verdict == bpf.VerdictPending:
		k := reqKeyOf(ev)
		e.mu.Lock()
		_, busy := e.requests[k]
		if busy || e.decided.has(k) {
			e.mu.Unlock()
			e.log.Debug("duplicate held request", "pid", ev.PID, "dst", ev.Dst, "reconciled", ev.Reconciled)
			return
		}
		e.requests[k] = nil
		e.mu.Unlock()
		e.counts.held.Add(1)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.decide(ev)
		}()
	case ev.Reason == bpf.ReasonLearning:
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.learn(ev)
		}()
	default:
		// A fail-mode decision or a refusal the kernel reports.
		v := dbusapi.Deny
		if ev.Verdict == bpf.VerdictAllow {
			v = dbusapi.Allow
		}
		how := howRule
		if ev.Reason == bpf.ReasonFailMode {
			how = howFailMode
		}
		path, _, _ := e.proc.ExePath(int(ev.PID))
		e.mu.Lock()
		e.recordLocked(ev, path, v, how)
		e.mu.Unlock()
	}
}

// decide verifies the process behind a held request and allows or denies
// it by rule, or asks its user.
func (e *Engine) decide(ev bpf.Event) {
	if e.beforeVerify != nil {
		e.beforeVerify(ev)
	}
	exe, err := e.proc.OpenExe(ev.PID, toProcKey(ev.Exe), ev.ProcessStart)
	if errors.Is(err, proc.ErrGone) {
		// Its sockets are gone with it, or it left them to a child: the
		// kernel still holds the request and reports it again.
		e.log.Debug("held request of a process that exited", "pid", ev.PID, "dst", ev.Dst)
		e.mu.Lock()
		delete(e.requests, reqKeyOf(ev))
		e.mu.Unlock()
		return
	}
	if err != nil {
		e.log.Warn("cannot verify process; denying once", "pid", ev.PID, "dst", ev.Dst, "err", err)
		e.decideOnce(ev, "", dbusapi.Deny, howUnverifiable)
		return
	}
	defer exe.Close()
	res, err := e.reg.Check(toProcKey(ev.Exe), exe.File)
	if err != nil {
		e.log.Warn("cannot check executable; denying once", "pid", ev.PID, "exe", exe.Path, "err", err)
		e.decideOnce(ev, exe.Path, dbusapi.Deny, howUnverifiable)
		return
	}
	if a, ok := appFor(res.Apps, ev.UID); ok {
		if err := e.trust(ev.Exe, ev.UID, a, res.SHA256); err != nil {
			e.log.Error("push app to kernel", "exe", a.Path, "err", err)
		}
		e.mu.Lock()
		host := e.hostLocked(ev.UID, ev.Dst.Addr())
		e.mu.Unlock()
		e.decideOnce(ev, exe.Path, dbusapi.Verdict(destVerdict(a, ev.Dst, ev.Proto, host)), howRule)
		return
	}
	e.mu.Lock()
	learning := e.settings.Mode == rules.Learning
	e.mu.Unlock()
	if learning {
		// Held before learning mode started: let it pass and record it.
		e.record(ev, exe, res.SHA256)
		e.decideOnce(ev, exe.Path, dbusapi.Allow, howLearning)
		return
	}
	changed, note := e.changeNote(exe.Path, ev.UID, res)
	e.ask(ev, exe, res.SHA256, changed, note)
}

// appFor picks the rule for uid among the apps a file is trusted as: the
// user's own rule before an any-user rule.
func appFor(as []rules.App, uid uint32) (rules.App, bool) {
	var any *rules.App
	for i := range as {
		switch as[i].UID {
		case uid:
			return as[i], true
		case rules.AnyUser:
			any = &as[i]
		}
	}
	if any != nil {
		return *any, true
	}
	return rules.App{}, false
}

// changeNote says whether the executable is a registered app whose
// binary changed, and what is known about the change.
func (e *Engine) changeNote(path string, uid uint32, res apps.Result) (bool, string) {
	var registered *apps.AppState
	for _, st := range e.reg.Apps() {
		if st.App.Path == path && (st.App.UID == uid || st.App.UID == rules.AnyUser) {
			registered = &st
			break
		}
	}
	if registered == nil {
		if len(res.Copies) > 0 {
			return false, "same content as " + res.Copies[0]
		}
		return false, ""
	}
	note := fmt.Sprintf("the binary changed since it was allowed (registered sha256 %.12s, now %.12s)", registered.App.SHA256, res.SHA256)
	if registered.App.Package != "" {
		note += "; it belongs to package " + registered.App.Package + ": rehash checks whether the package update explains it"
	} else {
		note += "; no package update explains it"
	}
	return true, note
}

// decideOnce resolves one held request.
func (e *Engine) decideOnce(ev bpf.Event, exe string, v dbusapi.Verdict, how string) {
	if err := e.dp.Resolve(ev, kernelVerdict(rules.Verdict(v))); err != nil {
		e.log.Error("resolve held request", "pid", ev.PID, "dst", ev.Dst, "err", err)
	}
	k := reqKeyOf(ev)
	e.mu.Lock()
	delete(e.requests, k)
	e.decided.add(k)
	e.recordLocked(ev, exe, v, how)
	e.mu.Unlock()
	e.log.Debug("held request decided", "pid", ev.PID, "exe", exe, "dst", ev.Dst, "verdict", v, "how", how)
}

// ask adds a held request to the prompt about its app, user and
// destination, raising the prompt if there is none yet.
func (e *Engine) ask(ev bpf.Event, exe *proc.Exe, sha string, changed bool, note string) {
	pk := promptKey{ev.Exe, ev.UID, ev.Dst, ev.Proto}
	if e.coalesce(pk, ev) {
		return
	}
	var lineage []string
	if chain, err := e.proc.Lineage(int(ev.PID)); err == nil {
		lineage = formatLineage(chain)
	}
	e.mu.Lock()
	if e.ctx == nil {
		delete(e.requests, reqKeyOf(ev))
		e.mu.Unlock()
		return
	}
	if p := e.byTarget[pk]; p != nil {
		p.reqs = append(p.reqs, ev)
		e.requests[reqKeyOf(ev)] = p
		e.mu.Unlock()
		return
	}
	e.seq++
	now := time.Now()
	p := &prompt{
		key:   pk,
		path:  exe.Path,
		sha:   sha,
		start: ev.ProcessStart,
		reqs:  []bpf.Event{ev},
		msg: dbusapi.Prompt{
			ID:      "p" + strconv.FormatInt(now.Unix(), 36) + "-" + strconv.FormatUint(e.seq, 10),
			UID:     ev.UID,
			PID:     ev.PID,
			Exe:     exe.Path,
			Lineage: lineage,
			Host:    e.hostLocked(ev.UID, ev.Dst.Addr()),
			Addr:    ev.Dst.Addr().String(),
			Port:    ev.Dst.Port(),
			Proto:   protoName(ev.Proto),
			Changed: changed,
			Note:    note,
			Time:    now.Unix(),
		},
	}
	e.prompts[p.msg.ID] = p
	e.byTarget[pk] = p
	e.requests[reqKeyOf(ev)] = p
	id := p.msg.ID
	p.timer = time.AfterFunc(e.promptTimeoutLocked(), func() { e.expire(id) })
	ctx, prompter, noAgent := e.ctx, e.prompter, e.settings.NoAgent
	e.mu.Unlock()

	e.log.Info("prompt raised", "prompt", id, "pid", ev.PID, "uid", ev.UID, "exe", exe.Path, "dst", ev.Dst, "host", p.msg.Host, "changed", changed)
	n := 0
	if prompter != nil {
		var err error
		if n, err = prompter.PromptAgents(ctx, p.msg); err != nil {
			e.log.Warn("deliver prompt", "prompt", id, "err", err)
		}
	}
	if n == 0 && noAgent == rules.NoAgentDeny {
		e.log.Info("no agent for the user; denying", "prompt", id, "uid", ev.UID)
		e.settle(id, dbusapi.Deny, howNoAgent)
	}
}

// coalesce adds ev to an open prompt for pk and reports whether there
// was one.
func (e *Engine) coalesce(pk promptKey, ev bpf.Event) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.byTarget[pk]
	if p == nil {
		return false
	}
	p.reqs = append(p.reqs, ev)
	e.requests[reqKeyOf(ev)] = p
	return true
}

// formatLineage lists a chain from proc.Lineage outermost first, each
// process as "path (pid)", with the script of an interpreter.
func formatLineage(chain []proc.Process) []string {
	out := make([]string, 0, len(chain))
	for i := len(chain) - 1; i >= 0; i-- {
		p := chain[i]
		name := p.Exe
		if name == "" {
			name = p.Comm
		}
		s := fmt.Sprintf("%s (%d)", name, p.PID)
		if p.Interpreter != nil && p.Interpreter.Script != "" {
			s += " " + p.Interpreter.Script
		}
		out = append(out, s)
	}
	return out
}

// expire denies a prompt nobody answered in time.
func (e *Engine) expire(id string) {
	if e.settle(id, dbusapi.Deny, howTimeout) {
		e.counts.timedOut.Add(1)
		e.log.Info("prompt timed out; denied once", "prompt", id)
	}
}

// settle decides every request of prompt id and withdraws the prompt. It
// reports whether the prompt was still open.
func (e *Engine) settle(id string, v dbusapi.Verdict, how string) bool {
	e.mu.Lock()
	p := e.prompts[id]
	if p == nil {
		e.mu.Unlock()
		return false
	}
	e.removePromptLocked(p)
	ctx, prompter := e.ctx, e.prompter
	e.mu.Unlock()

	kv := kernelVerdict(rules.Verdict(v))
	for _, ev := range p.reqs {
		if err := e.dp.Resolve(ev, kv); err != nil {
			e.log.Error("resolve held request", "prompt", id, "pid", ev.PID, "err", err)
		}
	}
	e.mu.Lock()
	for _, ev := range p.reqs {
		e.recordLocked(ev, p.path, v, how)
	}
	e.mu.Unlock()
	if prompter != nil && ctx != nil {
		if err := prompter.ResolvePrompt(ctx, id, v); err != nil {
			e.log.Warn("withdraw prompt", "prompt", id, "err", err)
		}
	}
	return true
}

// removePromptLocked forgets p and marks its requests decided.
func (e *Engine) removePromptLocked(p *prompt) {
	if p.timer != nil {
		p.timer.Stop()
	}
	delete(e.prompts, p.msg.ID)
	if e.byTarget[p.key] == p {
		delete(e.byTarget, p.key)
	}
	for _, ev := range p.reqs {
		k := reqKeyOf(ev)
		delete(e.requests, k)
		e.decided.add(k)
	}
}

// decidedSet remembers the latest decided requests, oldest dropped first.
type decidedSet struct {
	m    map[reqKey]struct{}
	fifo []reqKey
	next int
}

func (d *decidedSet) has(k reqKey) bool {
	_, ok := d.m[k]
	return ok
}

func (d *decidedSet) add(k reqKey) {
	if d.m == nil {
		d.m = map[reqKey]struct{}{}
		d.fifo = make([]reqKey, maxDecided)
	}
	if _, ok := d.m[k]; ok {
		return
	}
	if old := d.fifo[d.next]; old != (reqKey{}) {
		delete(d.m, old)
	}
	d.fifo[d.next] = k
	d.m[k] = struct{}{}
	d.next = (d.next + 1) % len(d.fifo)
}

func monotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
