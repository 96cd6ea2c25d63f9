package firewall

import (
	"errors"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/proc"
)

// maxLearnedDests bounds the destinations recorded per learned app.
const maxLearnedDests = 64

// learnKey identifies an app seen in learning mode.
type learnKey struct {
	path string
	uid  uint32
}

// learnedApp is an app seen in learning mode, recorded once.
type learnedApp struct {
	path    string
	uid     uint32
	sha     string
	exe     bpf.ExeKey
	lineage []string
	dests   []string
	first   time.Time
}

// learn handles a connection the kernel let pass in learning mode.
func (e *Engine) learn(ev bpf.Event) {
	if e.beforeVerify != nil {
		e.beforeVerify(ev)
	}
	exe, err := e.proc.OpenExe(ev.PID, toProcKey(ev.Exe), ev.ProcessStart)
	if err != nil {
		// Nothing trustworthy to record about a process that is gone or
		// is not the one the kernel saw.
		e.log.Debug("learning: cannot verify process", "pid", ev.PID, "dst", ev.Dst, "err", err)
		// The kernel reports each app and destination once: let the
		// next connection be reported, so short-lived apps are learned
		// when a later run is verified in time.
		if err := e.dp.ReportAgain(ev); err != nil {
			e.log.Warn("learning: re-arm report", "dst", ev.Dst, "err", err)
		}
		e.mu.Lock()
		e.recordLocked(ev, "", dbusapi.Allow, howLearning)
		e.mu.Unlock()
		return
	}
	defer exe.Close()
	res, err := e.reg.Check(toProcKey(ev.Exe), exe.File)
	if err == nil {
		if a, ok := appFor(res.Apps, ev.UID); ok {
			// A registered app whose key the kernel did not have yet.
			if err := e.trust(ev.Exe, ev.UID, a, res.SHA256); err != nil {
				e.log.Error("push app to kernel", "exe", a.Path, "err", err)
			}
			e.mu.Lock()
			e.recordLocked(ev, exe.Path, dbusapi.Allow, howRule)
			e.mu.Unlock()
			return
		}
	}
	e.record(ev, exe, res.SHA256)
	e.mu.Lock()
	e.recordLocked(ev, exe.Path, dbusapi.Allow, howLearning)
	e.mu.Unlock()
}

// record adds an unknown app's connection to the learned list.
func (e *Engine) record(ev bpf.Event, exe *proc.Exe, sha string) {
	k := learnKey{exe.Path, ev.UID}
	dst := ev.Dst.String() + "/" + protoName(ev.Proto)
	e.mu.Lock()
	l := e.learned[k]
	if l != nil {
		if len(l.dests) < maxLearnedDests && !contains(l.dests, dst) {
			l.dests = append(l.dests, dst)
		}
		if sha != "" {
			l.sha, l.exe = sha, ev.Exe
		}
		e.mu.Unlock()
		return
	}
	full := len(e.learned) >= e.cfg.MaxLearned
	e.mu.Unlock()
	if full {
		e.log.Warn("learned list full; not recording", "exe", exe.Path, "uid", ev.UID)
		return
	}
	var lineage []string
	if chain, err := e.proc.Lineage(int(ev.PID)); err == nil {
		lineage = formatLineage(chain)
	}
	e.mu.Lock()
	if l := e.learned[k]; l != nil {
		if !contains(l.dests, dst) && len(l.dests) < maxLearnedDests {
			l.dests = append(l.dests, dst)
		}
		e.mu.Unlock()
		return
	}
	e.learned[k] = &learnedApp{path: exe.Path, uid: ev.UID, sha: sha, exe: ev.Exe, lineage: lineage, dests: []string{dst}, first: time.Now()}
	e.mu.Unlock()
	e.log.Info("learned app", "exe", exe.Path, "uid", ev.UID, "dst", ev.Dst, "sha256", sha)
	// The learned list is part of what AppsChanged announces.
	e.signal(func(s Signals) error { return s.AppsChanged() })
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// learnedLocked lists the learned apps sorted by path and user.
func (e *Engine) learnedLocked() []dbusapi.Learned {
	out := make([]dbusapi.Learned, 0, len(e.learned))
	for _, l := range e.learned {
		out = append(out, dbusapi.Learned{
			Path:      l.path,
			UID:       l.uid,
			Lineage:   append([]string(nil), l.lineage...),
			Dests:     append([]string(nil), l.dests...),
			FirstSeen: l.first.Unix(),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].UID < out[j].UID
	})
	return out
}

// procKey identifies a process: its PID and boot-clock start time.
type procKey struct {
	pid   uint32
	start uint64
}

// quitRule is an until-quit answer: the kernel decides the process's
// executable for its user until the process exits.
type quitRule struct {
	proc procKey
	key  appKey
	f    *os.File // pidfd, readable when the process exits
}

func (q *quitRule) stop() { q.f.Close() }

// addQuit trusts or refuses the executable of prompt p's process for its
// user until that process exits, which a pidfd reports without polling.
func (e *Engine) addQuit(p *prompt, v dbusapi.Verdict) error {
	pk := procKey{p.msg.PID, p.start}
	fd, err := unix.PidfdOpen(int(pk.pid), 0)
	if err != nil {
		return &os.SyscallError{Syscall: "pidfd_open", Err: err}
	}
	st, err := e.proc.Stat(int(pk.pid))
	if err != nil || st.StartTicks != proc.TicksFromNs(pk.start) {
		unix.Close(fd)
		return proc.ErrGone
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return &os.SyscallError{Syscall: "fcntl", Err: err}
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	ak := appKey{p.key.exe, p.key.uid}
	e.mu.Lock()
	if e.ctx == nil {
		e.mu.Unlock()
		f.Close()
		return errors.New("firewall not running")
	}
	id, ok := e.kernel.quitIDs[ak]
	if !ok {
		id = e.kernel.nextID
		e.kernel.nextID++
		e.kernel.quitIDs[ak] = id
	}
	en := e.kernel.entries[ak]
	en.app = bpf.App{ID: id, Verdict: kernelVerdict(ruleVerdict(v))}
	if err := e.dp.SetApp(ak.exe, ak.uid, en.app); err != nil {
		e.mu.Unlock()
		f.Close()
		return err
	}
	old := e.untilQuit[pk]
	if old == nil {
		en.quit++
	}
	e.kernel.entries[ak] = en
	q := &quitRule{proc: pk, key: ak, f: f}
	e.untilQuit[pk] = q
	e.mu.Unlock()
	if old != nil {
		old.stop()
	}

	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		first := true
		// The first call only registers interest; readiness means exit.
		_ = rc.Read(func(uintptr) bool {
			if first {
				first = false
				return false
			}
			return true
		})
		f.Close()
		e.dropQuit(q)
	}()
	return nil
}

// dropQuit ends an until-quit answer whose process exited (or whose
// engine stopped).
func (e *Engine) dropQuit(q *quitRule) {
	e.mu.Lock()
	if e.untilQuit[q.proc] == q {
		delete(e.untilQuit, q.proc)
	} else {
		// Replaced by a later answer for the same process.
		e.mu.Unlock()
		return
	}
	en, ok := e.kernel.entries[q.key]
	resync := false
	if ok {
		en.quit--
		if en.quit <= 0 {
			if err := e.dp.DeleteApp(q.key.exe, q.key.uid); err != nil {
				e.log.Error("remove until-quit rule", "pid", q.proc.pid, "err", err)
			}
			delete(e.kernel.entries, q.key)
			resync = en.rule != (ruleRef{})
		} else {
			e.kernel.entries[q.key] = en
		}
	}
	running := e.ctx != nil
	e.mu.Unlock()
	e.log.Debug("until-quit rule ended", "pid", q.proc.pid)
	if resync && running {
		if err := e.syncKernel(); err != nil {
			e.log.Error("update kernel policy", "err", err)
		}
	}
}
