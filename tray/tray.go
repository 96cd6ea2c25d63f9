// Package tray is aegis-tray, the per-user tray of the Aegis firewall: a
// StatusNotifierItem icon and menu (fyne.io/systray), the prompt agent
// that shows the helper's prompts as notifications with Allow once /
// Always allow / Deny, and alerts for tampering, changed binaries and a
// stopped helper.
//
// BuildMenu and IconState turn what the tray knows (State) into the menu
// and icon; Run wires them to the helper's D-Bus API and the desktop.
package tray

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"fyne.io/systray"
	"github.com/godbus/dbus/v5"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/icons"
	"github.com/aegisfw/aegis/tray/notify"
)

// DefaultAgentPath is the object path of the tray's prompt agent.
const DefaultAgentPath = dbus.ObjectPath("/io/github/aegisfw/Tray")

// iconSize is the side of the tray icon pixmap.
const iconSize = 64

// Config configures Run.
type Config struct {
	// SystemBus is the address of the helper's bus; empty for the system
	// bus (DBUS_SYSTEM_BUS_ADDRESS or its standard socket). The icon,
	// menu and notifications use the session bus of
	// DBUS_SESSION_BUS_ADDRESS.
	SystemBus string
	// AgentPath is where the prompt agent is exported; default
	// DefaultAgentPath.
	AgentPath dbus.ObjectPath
	// CallTimeout bounds each read from the helper and each notification
	// call; default 10 s. Changes (mode, rules, answers) may wait for an
	// authentication dialog and are bounded by InteractiveTimeout,
	// default 5 min.
	CallTimeout        time.Duration
	InteractiveTimeout time.Duration
	// Logger receives the tray's log. Required.
	Logger *slog.Logger
}

// Run shows the tray until ctx ends or the user picks Quit. fyne.io/systray
// keeps its state in the process, so Run may be called once per process.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Logger == nil {
		return errors.New("tray: no logger")
	}
	if cfg.AgentPath == "" {
		cfg.AgentPath = DefaultAgentPath
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	if cfg.InteractiveTimeout <= 0 {
		cfg.InteractiveTimeout = 5 * time.Minute
	}
	sys, err := dbusapi.Dial(cfg.SystemBus)
	if err != nil {
		return fmt.Errorf("connect to the system bus: %w", err)
	}
	defer sys.Close()
	sess, err := dbus.ConnectSessionBus()
	if err != nil {
		return fmt.Errorf("connect to the session bus: %w", err)
	}
	defer sess.Close()
	notifier, err := notify.New(sess, cfg.Logger)
	if err != nil {
		return err
	}
	defer notifier.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := &trayApp{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "tray"),
		sys:      sys,
		client:   dbusapi.NewClient(sys, true),
		notifier: notifier,
		notes:    newPromptNotes(notifier),
		inbox:    make(chan func(), 256),
		clicks:   make(chan Action, 16),
		icon:     -1,
		pngs:     map[icons.State][]byte{},
	}
	for _, s := range icons.States() {
		t.pngs[s] = icons.PNG(s, iconSize)
	}
	t.menu = newSysMenu(t.clicks, ctx.Done())
	if err := t.subscribe(ctx); err != nil {
		return err
	}

	loopErr := make(chan error, 1)
	onReady := func() {
		t.render()
		// fyne.io/systray v1.12.2 drops an icon or title set while it
		// exports its properties at start; set them again shortly after.
		for _, d := range []time.Duration{300 * time.Millisecond, 2 * time.Second} {
			time.AfterFunc(d, func() {
				select {
				case t.inbox <- t.reapplyLook:
				case <-ctx.Done():
				}
			})
		}
		go func() {
			loopErr <- t.loop(ctx)
			systray.Quit()
		}()
	}
	go func() {
		<-ctx.Done()
		systray.Quit()
	}()
	systray.Run(onReady, nil)
	cancel()
	select {
	case err := <-loopErr:
		return err
	case <-time.After(cfg.CallTimeout):
		return errors.New("tray: event loop did not stop")
	}
}

// trayApp is the running tray. Its fields after the first group are owned
// by loop's goroutine.
type trayApp struct {
	cfg      Config
	log      *slog.Logger
	sys      *dbus.Conn
	client   *dbusapi.Client
	notifier *notify.Notifier
	menu     *sysMenu
	inbox    chan func()
	clicks   chan Action

	helperEvents <-chan dbusapi.Event
	owners       chan *dbus.Signal

	mu   sync.Mutex // guards st for render
	st   State
	icon icons.State

	notes *promptNotes
	// pngs holds the icon of each state, rendered once.
	pngs map[icons.State][]byte
	// hashStates remembers each app's hash state to alert on changes.
	hashStates map[string]dbusapi.HashState
}

// subscribe watches the helper's name and signals.
func (t *trayApp) subscribe(ctx context.Context) error {
	err := t.sys.AddMatchSignalContext(ctx,
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchInterface("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, dbusapi.BusName))
	if err != nil {
		return fmt.Errorf("watch %s: %w", dbusapi.BusName, err)
	}
	t.owners = make(chan *dbus.Signal, 16)
	t.sys.Signal(t.owners)
	t.helperEvents, err = t.client.Watch(ctx)
	return err
}

// loop handles every event until ctx ends.
func (t *trayApp) loop(ctx context.Context) error {
	if t.helperRunning(ctx) {
		t.connect(ctx)
	} else {
		t.disconnect(ctx, false)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-t.owners:
			if !ok {
				return errors.New("system bus connection closed")
			}
			if sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(sig.Body) != 3 || sig.Body[0] != dbusapi.BusName {
				continue
			}
			if owner, _ := sig.Body[2].(string); owner != "" {
				t.log.Info("helper appeared", "owner", owner)
				t.connect(ctx)
			} else {
				t.log.Warn("helper left the bus")
				t.disconnect(ctx, true)
			}
		case ev, ok := <-t.helperEvents:
			if !ok {
				return nil
			}
			t.onHelperEvent(ctx, ev)
		case ev, ok := <-t.notifier.Events():
			if !ok {
				return nil
			}
			t.onNotification(ctx, ev)
		case a := <-t.clicks:
			t.onClick(ctx, a)
		case <-systray.TrayOpenedCh:
			// Learned apps and flows change without a signal: read
			// them when the user looks.
			t.refresh(ctx, refreshStatus|refreshLearned|refreshFlows)
		case f := <-t.inbox:
			f()
		}
		t.render()
	}
}

func (t *trayApp) helperRunning(ctx context.Context) bool {
	var has bool
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	err := t.sys.BusObject().CallWithContext(cctx, "org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName).Store(&has)
	return err == nil && has
}

// connect registers the prompt agent with a (new) helper and reads its state.
func (t *trayApp) connect(ctx context.Context) {
	t.setState(func(st *State) { st.Connected = true })
	t.refresh(ctx, refreshAll)
	if !t.connected() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	if caps, err := t.notifier.Capabilities(cctx); err == nil {
		t.notes.markup = slices.Contains(caps, "body-markup")
	}
	if err := t.client.RegisterAgent(cctx, t.cfg.AgentPath, &agent{inbox: t.inbox, t: t, ctx: ctx}); err != nil {
		t.log.Warn("register prompt agent", "err", err)
		return
	}
	t.log.Info("prompt agent registered", "path", t.cfg.AgentPath)
	// Prompts raised before the registration are still pending.
	ps, err := t.client.Prompts(cctx)
	if err != nil {
		t.log.Warn("list prompts", "err", err)
		return
	}
	for _, p := range ps {
		t.showPrompt(ctx, p)
	}
}

// disconnect shows the helper as gone; alert says so on the desktop.
func (t *trayApp) disconnect(ctx context.Context, alert bool) {
	t.setState(func(st *State) { *st = State{} })
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	if err := t.notes.clear(cctx); err != nil {
		t.log.Warn("close prompt notifications", "err", err)
	}
	if alert {
		t.alert("Aegis helper stopped", "The firewall helper is not running. Apps already decided keep their rules; unknown apps are refused.", icons.Disconnected)
	}
}

func (t *trayApp) connected() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.st.Connected
}

func (t *trayApp) setState(f func(*State)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(&t.st)
}

// What refresh reads from the helper.
const (
	refreshStatus = 1 << iota
	refreshApps
	refreshLearned
	refreshPrompts
	refreshFlows
	refreshAll = refreshStatus | refreshApps | refreshLearned | refreshPrompts | refreshFlows
)

// refresh reads parts of the helper's state. A helper that does not
// answer is shown as disconnected until its name reappears.
func (t *trayApp) refresh(ctx context.Context, what int) {
	if !t.connected() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	var errs []error
	st := func() State { t.mu.Lock(); defer t.mu.Unlock(); return t.st }()
	if what&refreshStatus != 0 {
		s, err := t.client.Status(cctx)
		errs = append(errs, err)
		st.Status = s
	}
	if what&refreshApps != 0 {
		apps, err := t.client.Apps(cctx)
		errs = append(errs, err)
		st.Apps = apps
		t.checkHashes(apps)
	}
	if what&refreshLearned != 0 {
		l, err := t.client.Learned(cctx)
		errs = append(errs, err)
		st.Learned = l
	}
	if what&refreshPrompts != 0 {
		ps, err := t.client.Prompts(cctx)
		errs = append(errs, err)
		st.Prompts = ps
	}
	if what&refreshFlows != 0 {
		fs, err := t.client.Flows(cctx)
		errs = append(errs, err)
		slices.SortStableFunc(fs, func(a, b dbusapi.Flow) int { return int(a.Start - b.Start) })
		st.Flows = fs
	}
	if err := errors.Join(errs...); err != nil {
		t.log.Warn("read helper state", "err", err)
		var de dbus.Error
		if errors.As(err, &de) && (de.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner") {
			t.disconnect(ctx, false)
			return
		}
	}
	t.setState(func(s *State) {
		if s.Connected {
			*s = st
		}
	})
}

// checkHashes alerts about apps whose binary changed since the last look.
func (t *trayApp) checkHashes(apps []dbusapi.App) {
	first := t.hashStates == nil
	if first {
		t.hashStates = map[string]dbusapi.HashState{}
	}
	for _, a := range apps {
		k := a.Path + "#" + fmt.Sprint(a.UID)
		old, seen := t.hashStates[k]
		t.hashStates[k] = a.HashState
		if !first && (seen || a.HashState != dbusapi.HashValid) && old != a.HashState && a.HashState != dbusapi.HashValid {
			t.alert("Aegis: "+filepath.Base(a.Path)+" "+string(a.HashState),
				a.Path+" no longer matches the hash it was allowed with. Its connections are held until you rehash or decide again.", icons.Alert)
		}
	}
}

func (t *trayApp) onHelperEvent(ctx context.Context, ev dbusapi.Event) {
	t.log.Debug("helper signal", "signal", ev.Kind)
	switch ev.Kind {
	case "ModeChanged":
		t.setState(func(st *State) { st.Status.Mode = ev.Mode })
		t.refresh(ctx, refreshStatus)
	case "AppsChanged", "RulesChanged":
		t.refresh(ctx, refreshStatus|refreshApps|refreshLearned)
	case "HashChanged":
		t.refresh(ctx, refreshStatus|refreshApps)
	case "Tampered":
		t.refresh(ctx, refreshStatus)
		t.alert("Aegis: rules tampered with", "Someone changed "+ev.Path+" outside Aegis. The last good rules stay in force; the rejected content was kept as "+ev.Rejected+".", icons.Alert)
	case "PromptRequested", "PromptResolved":
		t.refresh(ctx, refreshStatus|refreshPrompts|refreshFlows|refreshLearned)
	}
}

func (t *trayApp) showPrompt(ctx context.Context, p dbusapi.Prompt) {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	if err := t.notes.add(cctx, p); err != nil {
		t.log.Warn("show prompt", "prompt", p.ID, "exe", p.Exe, "err", err)
	}
	t.setState(func(st *State) {
		if !slices.ContainsFunc(st.Prompts, func(q dbusapi.Prompt) bool { return q.ID == p.ID }) {
			st.Prompts = append(st.Prompts, p)
		}
	})
}

func (t *trayApp) withdrawPrompt(ctx context.Context, id string) {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.CallTimeout)
	defer cancel()
	if err := t.notes.remove(cctx, id); err != nil {
		t.log.Warn("withdraw prompt", "prompt", id, "err", err)
	}
	t.setState(func(st *State) {
		st.Prompts = slices.DeleteFunc(st.Prompts, func(q dbusapi.Prompt) bool { return q.ID == id })
	})
}

func (t *trayApp) onNotification(ctx context.Context, ev notify.Event) {
	switch ev.Kind {
	case notify.Closed:
		t.notes.closed(ev.ID)
	case notify.ActionInvoked:
		answers, err := t.notes.action(ev.ID, ev.Action)
		if err != nil {
			t.log.Debug("notification action", "id", ev.ID, "action", ev.Action, "err", err)
			return
		}
		t.log.Info("prompt answered from notification", "action", ev.Action, "prompts", len(answers))
		go t.answer(ctx, answers)
	}
}

// answer sends answers in order; it may wait for an authentication dialog.
func (t *trayApp) answer(ctx context.Context, answers []answer) {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.InteractiveTimeout)
	defer cancel()
	for _, a := range answers {
		err := t.client.Answer(cctx, a.ID, a.Verdict, a.Scope)
		switch {
		case err == nil:
		case errors.Is(err, dbusapi.ErrNotFound):
			// Decided meanwhile, e.g. by the rule an Always answer wrote.
		default:
			t.log.Warn("answer prompt", "prompt", a.ID, "verdict", a.Verdict, "scope", a.Scope, "err", err)
			t.actionFailed("answer", err)
		}
	}
}

// onClick runs a menu action; changes run in their own goroutine since
// they may wait for an authentication dialog.
func (t *trayApp) onClick(ctx context.Context, a Action) {
	t.log.Info("menu action", "action", a.Kind, "path", a.Path, "mode", a.Mode, "prompt", a.PromptID)
	if a.Kind == Quit {
		systray.Quit()
		return
	}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, t.cfg.InteractiveTimeout)
		defer cancel()
		var err error
		switch a.Kind {
		case SetMode:
			err = t.client.SetMode(cctx, a.Mode)
		case AnswerPrompt:
			t.answer(ctx, []answer{{ID: a.PromptID, Verdict: a.Verdict, Scope: a.Scope}})
		case AllowApp:
			err = t.client.Allow(cctx, a.Path, a.UID)
		case DenyApp:
			err = t.client.Deny(cctx, a.Path, a.UID)
		case RehashApp:
			var r dbusapi.Rehashed
			if r, err = t.client.Rehash(cctx, a.Path); err == nil {
				t.rehashed([]dbusapi.Rehashed{r})
			}
		case RehashAll:
			var rs []dbusapi.Rehashed
			if rs, err = t.client.RehashAll(cctx); err == nil {
				t.rehashed(rs)
			}
		case ForgetApp:
			err = t.client.Forget(cctx, a.Path, a.UID)
		case AdoptLearned:
			err = t.client.AdoptLearned(cctx, a.Paths)
		}
		if err != nil && !errors.Is(err, dbusapi.ErrCancelled) {
			t.log.Warn("menu action failed", "action", a.Kind, "path", a.Path, "err", err)
			t.actionFailed("change", err)
		}
	}()
}

// rehashed says whether a package update explains each new hash.
func (t *trayApp) rehashed(rs []dbusapi.Rehashed) {
	for _, r := range rs {
		msg := r.Path + ": modified outside the package manager"
		if r.Package != "" {
			msg = r.Path + ": updated by package " + r.Package
		}
		t.alert("Aegis: rehashed "+filepath.Base(r.Path), msg, icons.Enforcing)
	}
}

func (t *trayApp) actionFailed(what string, err error) {
	msg := err.Error()
	if errors.Is(err, dbusapi.ErrNotAuthorized) {
		msg = "You are not allowed to make this change."
	}
	t.alert("Aegis: "+what+" failed", msg, icons.Alert)
}

// alert shows a plain notification. beeep shares the process's session
// bus connection and falls back to notify-send.
func (t *trayApp) alert(title, body string, s icons.State) {
	if err := notify.Alert(title, body, t.pngs[s]); err != nil {
		t.log.Warn("alert", "title", title, "err", err)
	}
}

// render shows the current state in the menu and icon.
func (t *trayApp) render() {
	t.mu.Lock()
	st := t.st
	t.mu.Unlock()
	t.menu.apply(BuildMenu(st))
	if s := IconState(st); s != t.icon {
		t.icon = s
		t.setLook(st)
	} else {
		systray.SetTooltip(StatusLine(st))
	}
}

func (t *trayApp) reapplyLook() {
	t.mu.Lock()
	st := t.st
	t.mu.Unlock()
	t.setLook(st)
}

func (t *trayApp) setLook(st State) {
	systray.SetIcon(t.pngs[IconState(st)])
	systray.SetTitle("Aegis")
	systray.SetTooltip(StatusLine(st))
}

// agent receives the helper's prompts on the bus goroutines and hands
// them to the event loop.
type agent struct {
	inbox chan<- func()
	t     *trayApp
	ctx   context.Context
}

func (a *agent) Prompt(p dbusapi.Prompt) {
	a.send(func() { a.t.showPrompt(a.ctx, p) })
}

func (a *agent) Cancel(id string) {
	a.send(func() { a.t.withdrawPrompt(a.ctx, id) })
}

func (a *agent) send(f func()) {
	select {
	case a.inbox <- f:
	case <-a.ctx.Done():
	case <-time.After(time.Second):
		a.t.log.Warn("prompt agent: event loop busy, prompt dropped")
	}
}
