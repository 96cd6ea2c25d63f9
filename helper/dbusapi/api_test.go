package dbusapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/aegisfw/aegis/internal/testenv"
	"github.com/google/go-cmp/cmp"
)

const replyTimeout = 20 * time.Second

// fixture is a private system bus with the project's bus policy, a real
// polkitd with the test rules, and a Server on an in-memory backend.
type fixture struct {
	bus       *testbus.Bus
	backend   *memBackend
	server    *dbusapi.Server
	trusted   string // test binary copy listed as a trusted agent
	untrusted string // the same binary with a different SHA-256
	logs      *logBuffer
}

// logBuffer collects the server's log for assertions and the test log.
type logBuffer struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return l.buf.Write(p)
}

// hasLine reports whether one logged line contains every one of subs.
func (l *logBuffer) hasLine(subs ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
lines:
	for _, line := range strings.Split(l.buf.String(), "\n") {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		return true
	}
	return false
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	bus := testbus.Start(t, testbus.Options{
		PolicyFiles:   []string{testbus.ModuleFile(t, "systemd/io.github.aegisfw.Aegis1.conf")},
		Polkit:        true,
		PolkitActions: []string{testbus.ModuleFile(t, "polkit/io.github.aegisfw.aegis.policy")},
		PolkitRules:   testbus.AegisRules,
	})
	f := &fixture{
		bus:       bus,
		backend:   newMemBackend(),
		trusted:   testbus.SharedExecutable(t, ""),
		untrusted: testbus.SharedExecutable(t, "untrusted"),
		logs:      &logBuffer{t: t},
	}
	conn := bus.Conn(t)
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := dbusapi.NewServer(conn, dbusapi.Config{
		Backend:       f.backend,
		Authorizer:    authz.New(conn, log),
		TrustedAgents: []string{f.trusted, "/nonexistent/aegis-tray"},
		Logger:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	f.server = srv
	return f
}

// client is a test binary running as a user and speaking the child_test.go
// protocol.
type client struct {
	t       *testing.T
	user    testbus.User
	child   *testbus.Child
	replies chan string
	events  chan string
	name    string
}

var root = testbus.User{Name: "root"}

func (f *fixture) client(t *testing.T, userName, exe string) *client {
	t.Helper()
	u := root
	if userName != "root" {
		u = testbus.EnsureUser(t, userName)
	}
	c := &client{t: t, user: u, child: f.bus.StartChild(t, u, exe, childRole),
		replies: make(chan string, 16), events: make(chan string, 64)}
	go func() {
		for l := range c.child.Lines() {
			if strings.HasPrefix(l, "prompt ") || strings.HasPrefix(l, "cancel ") {
				c.events <- l
			} else {
				c.replies <- l
			}
		}
		close(c.replies)
	}()
	var name string
	c.mustOK("name", "", &name)
	c.name = name
	return c
}

// do sends an op and returns its reply line.
func (c *client) do(op string, arg any) string {
	c.t.Helper()
	line := op
	if arg != nil {
		b, err := json.Marshal(arg)
		if err != nil {
			c.t.Fatal(err)
		}
		line += " " + string(b)
	}
	c.child.Send(c.t, line)
	select {
	case r, ok := <-c.replies:
		if !ok {
			c.t.Fatalf("%s: client exited", op)
		}
		return r
	case <-time.After(replyTimeout):
		c.t.Fatalf("%s: no reply within %v", op, replyTimeout)
	}
	return ""
}

func (c *client) mustOK(op string, arg any, out any) {
	c.t.Helper()
	r := c.do(op, arg)
	rest, ok := strings.CutPrefix(r, "ok ")
	if !ok {
		c.t.Fatalf("%s as %s: %s", op, c.user.Name, r)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(rest), out); err != nil {
			c.t.Fatalf("%s: decode %q: %v", op, rest, err)
		}
	}
}

// call calls a Client method and returns "" on success or the D-Bus
// error name.
func (c *client) call(method string, args ...any) string {
	c.t.Helper()
	if args == nil {
		args = []any{}
	}
	r := c.do("call", map[string]any{"method": method, "args": args})
	if strings.HasPrefix(r, "ok ") {
		return ""
	}
	var name string
	if err := json.Unmarshal([]byte(strings.TrimPrefix(r, "err ")), &name); err != nil {
		c.t.Fatalf("bad reply %q", r)
	}
	return name
}

// callResult calls a read-only Client method that must succeed and
// decodes its result.
func (c *client) callResult(out any, method string, args ...any) {
	c.t.Helper()
	if args == nil {
		args = []any{}
	}
	c.mustOK("call", map[string]any{"method": method, "args": args}, out)
}

// nextEvent returns the next agent event line, or "" if none arrives
// within wait.
func (c *client) nextEvent(wait time.Duration) string {
	select {
	case e := <-c.events:
		return e
	case <-time.After(wait):
		return ""
	}
}

// seed resets the backend and gives every test user (and root) one
// pending prompt, with id "p-<uid>".
func (f *fixture) seed(t *testing.T) {
	t.Helper()
	b := newMemBackend()
	uids := []uint32{0}
	for _, n := range []string{testbus.UserAdmin, testbus.UserPlain, testbus.UserRefused, testbus.UserChallenged, testbus.UserDesktop} {
		uids = append(uids, testbus.EnsureUser(t, n).UID)
	}
	for _, uid := range uids {
		b.state.Prompts = append(b.state.Prompts, dbusapi.Prompt{ID: promptID(uid), UID: uid, Exe: "/usr/bin/curl", Addr: "192.0.2.1", Port: 443, Proto: "tcp"})
		b.state.Flows = append(b.state.Flows, dbusapi.Flow{Cookie: uint64(uid), UID: uid, Exe: "/usr/bin/curl"})
	}
	f.backend.mu.Lock()
	f.backend.state = b.state
	f.backend.mu.Unlock()
}

func promptID(uid uint32) string { return fmt.Sprintf("p-%d", uid) }

const (
	errNotAuthorized = dbusapi.ErrorNotAuthorized
	errCancelled     = dbusapi.ErrorCancelled
	errInvalid       = dbusapi.ErrorInvalidArgument
	errNotFound      = dbusapi.ErrorNotFound
)

// TestMutatingMethodsAuthorization calls every mutating method as root,
// an authorized user, an unauthorized user, a user the rules refuse, a
// user who must authenticate (without interaction, and with a dismissed
// dialog), and a desktop user who may answer only its own prompts. Every
// refused call must leave the backend unchanged; every allowed call must
// reach it.
func TestMutatingMethodsAuthorization(t *testing.T) {
	f := newFixture(t)
	type method struct {
		name string
		args func(uid uint32) []any
		// answer marks the Answer calls with scope once or until-quit,
		// which need answer-prompt rather than an admin action.
		answer bool
	}
	methods := []method{
		{"SetMode", func(uint32) []any { return []any{"learning"} }, false},
		{"Allow", func(uid uint32) []any { return []any{"/usr/bin/wget", uid} }, false},
		{"Deny", func(uid uint32) []any { return []any{"/usr/bin/wget", dbusapi.AnyUser} }, false},
		{"Forget", func(uint32) []any { return []any{"/usr/bin/curl", dbusapi.AnyUser} }, false},
		{"Rehash", func(uint32) []any { return []any{"/usr/bin/curl"} }, false},
		{"RehashAll", func(uint32) []any { return nil }, false},
		{"AdoptLearned", func(uint32) []any { return []any{[]string{"/usr/bin/wget", "/usr/bin/ssh"}} }, false},
		{"Import", func(uint32) []any { return []any{"version = 1\n"} }, false},
		{"Export", func(uint32) []any { return nil }, false},
		{"Answer", func(uid uint32) []any { return []any{promptID(uid), "allow", "once"} }, true},
		{"Answer", func(uid uint32) []any { return []any{promptID(uid), "deny", "until-quit"} }, true},
		{"Answer", func(uid uint32) []any { return []any{promptID(uid), "allow", "always"} }, false},
		{"Answer", func(uid uint32) []any { return []any{promptID(uid), "deny", "always-all-users"} }, false},
	}
	callers := []struct {
		name        string
		user        string
		interactive bool // call with ALLOW_INTERACTIVE_AUTHORIZATION and a dismissing polkit agent
		want        string
		wantAnswer  string // for the answer-prompt methods
	}{
		{"root", "root", false, "", ""},
		{"authorized user", testbus.UserAdmin, false, "", ""},
		{"unauthorized user", testbus.UserPlain, false, errNotAuthorized, errNotAuthorized},
		{"user the rules refuse", testbus.UserRefused, false, errNotAuthorized, errNotAuthorized},
		{"refused user, interactive", testbus.UserRefused, true, errNotAuthorized, errNotAuthorized},
		{"authentication needed, not interactive", testbus.UserChallenged, false, errNotAuthorized, errNotAuthorized},
		{"dismissed authentication", testbus.UserChallenged, true, errCancelled, errCancelled},
		{"desktop user", testbus.UserDesktop, false, errNotAuthorized, ""},
	}
	for _, cl := range callers {
		t.Run(cl.name, func(t *testing.T) {
			c := f.client(t, cl.user, f.trusted)
			if cl.interactive {
				c.mustOK("polkit-agent", nil, nil)
				c.mustOK("interactive", nil, nil)
			}
			for _, m := range methods {
				f.seed(t)
				before := f.backend.snapshot()
				args := m.args(c.user.UID)
				got := c.call(m.name, args...)
				want := cl.want
				if m.answer {
					want = cl.wantAnswer
				}
				if got != want {
					t.Errorf("%s%v = %q, want %q", m.name, args, got, want)
				}
				after := f.backend.snapshot()
				changed := cmp.Diff(before, after) != ""
				if want != "" && changed {
					t.Errorf("%s%v was refused but changed the backend (-before +after):\n%s", m.name, args, cmp.Diff(before, after))
				}
				if want == "" && !changed {
					t.Errorf("%s%v succeeded but did not reach the backend", m.name, args)
				}
				if want == "" && m.name == "Answer" {
					if a := after.Answers[len(after.Answers)-1]; a.UID != c.user.UID {
						t.Errorf("Answer recorded uid %d, want the caller's %d", a.UID, c.user.UID)
					}
				}
			}
		})
	}
}

// TestReadOnlyMethods checks that any user may read, and sees only its
// own prompts and flows.
func TestReadOnlyMethods(t *testing.T) {
	f := newFixture(t)
	f.seed(t)
	for _, user := range []string{testbus.UserRefused, testbus.UserPlain, "root"} {
		c := f.client(t, user, f.untrusted)
		var st dbusapi.Status
		c.callResult(&st, "GetStatus")
		if st.Mode != dbusapi.Enforce || st.Prompts != 6 {
			t.Errorf("%s: GetStatus = %+v, want mode enforce and 6 prompts", user, st)
		}
		var mode dbusapi.Mode
		c.callResult(&mode, "Mode")
		if mode != dbusapi.Enforce {
			t.Errorf("%s: Mode property = %q", user, mode)
		}
		var cs dbusapi.Counters
		c.callResult(&cs, "GetCounters")
		var apps []dbusapi.App
		c.callResult(&apps, "ListApps")
		if len(apps) != 1 || apps[0].Path != "/usr/bin/curl" {
			t.Errorf("%s: ListApps = %+v", user, apps)
		}
		var rules []dbusapi.Rule
		c.callResult(&rules, "Show")
		if len(rules) != 1 {
			t.Errorf("%s: Show = %+v", user, rules)
		}
		var learned []dbusapi.Learned
		c.callResult(&learned, "ListLearned")
		var prompts []dbusapi.Prompt
		c.callResult(&prompts, "ListPrompts")
		var flows []dbusapi.Flow
		c.callResult(&flows, "ListFlows")
		want := 1
		if user == "root" {
			want = 6
		}
		if len(prompts) != want || len(flows) != want {
			t.Errorf("%s sees %d prompts and %d flows, want %d", user, len(prompts), len(flows), want)
		}
		for _, p := range prompts {
			if user != "root" && p.UID != c.user.UID {
				t.Errorf("%s sees prompt %s of uid %d", user, p.ID, p.UID)
			}
		}
		for _, fl := range flows {
			if user != "root" && fl.UID != c.user.UID {
				t.Errorf("%s sees a flow of uid %d", user, fl.UID)
			}
		}
	}
}

// TestInvalidArguments checks that malformed arguments give
// InvalidArgument before any authorization, for root and for an
// authorized user, and change nothing.
func TestInvalidArguments(t *testing.T) {
	f := newFixture(t)
	big := "/" + strings.Repeat("x", 1<<20)
	tests := []struct {
		method string
		args   []any
	}{
		{"SetMode", []any{"permissive"}},
		{"SetMode", []any{""}},
		{"Allow", []any{"usr/bin/curl", uint32(0)}},
		{"Allow", []any{"/usr/bin/../bin/curl", uint32(0)}},
		{"Allow", []any{big, uint32(0)}},
		{"Deny", []any{"", uint32(0)}},
		{"Forget", []any{"curl", uint32(0)}},
		{"Rehash", []any{"./curl"}},
		{"Rehash", []any{big}},
		{"AdoptLearned", []any{[]string{}}},
		{"AdoptLearned", []any{[]string{"/usr/bin/ok", "relative"}}},
		{"Import", []any{strings.Repeat("#", dbusapi.MaxImportSize+1)}},
		{"Answer", []any{"", "allow", "once"}},
		{"Answer", []any{"p/1", "allow", "once"}},
		{"Answer", []any{strings.Repeat("p", 1<<20), "allow", "once"}},
		{"Answer", []any{"p-0", "maybe", "once"}},
		{"Answer", []any{"p-0", "allow", "forever"}},
		{"Answer", []any{"p-0", "allow", strings.Repeat("s", 1<<20)}},
	}
	for _, user := range []string{"root", testbus.UserAdmin, testbus.UserRefused} {
		c := f.client(t, user, f.trusted)
		for _, tt := range tests {
			f.seed(t)
			before := f.backend.snapshot()
			if got := c.call(tt.method, tt.args...); got != errInvalid {
				t.Errorf("%s: %s(%.40v) = %q, want %q", user, tt.method, tt.args, got, errInvalid)
			}
			if diff := cmp.Diff(before, f.backend.snapshot()); diff != "" {
				t.Errorf("%s: %s changed the backend:\n%s", user, tt.method, diff)
			}
		}
	}
	// Valid arguments naming nothing give NotFound.
	c := f.client(t, testbus.UserAdmin, f.trusted)
	if got := c.call("Answer", "p-none", "allow", "once"); got != errNotFound {
		t.Errorf("Answer(unknown id) = %q, want %q", got, errNotFound)
	}
	if got := c.call("Forget", "/usr/bin/none", dbusapi.AnyUser); got != errNotFound {
		t.Errorf("Forget(unknown app) = %q, want %q", got, errNotFound)
	}
}

// TestAnswerOnlyByOwner checks that a prompt about one user's process
// cannot be answered by another user, even an administrator, while root
// may answer any and administrators may answer root's.
func TestAnswerOnlyByOwner(t *testing.T) {
	f := newFixture(t)
	admin := f.client(t, testbus.UserAdmin, f.trusted)
	desktop := f.client(t, testbus.UserDesktop, f.trusted)
	rootc := f.client(t, "root", f.trusted)
	tests := []struct {
		name string
		c    *client
		id   string
		want string
	}{
		{"desktop user answers the admin's prompt", desktop, promptID(admin.user.UID), errNotAuthorized},
		{"admin answers the desktop user's prompt", admin, promptID(desktop.user.UID), errNotAuthorized},
		{"desktop user answers root's prompt", desktop, promptID(0), errNotAuthorized},
		{"admin answers root's prompt", admin, promptID(0), ""},
		{"root answers the desktop user's prompt", rootc, promptID(desktop.user.UID), ""},
		{"desktop user answers its own prompt", desktop, promptID(desktop.user.UID), ""},
	}
	for _, tt := range tests {
		f.seed(t)
		before := f.backend.snapshot()
		if got := tt.c.call("Answer", tt.id, "allow", "once"); got != tt.want {
			t.Errorf("%s: Answer = %q, want %q", tt.name, got, tt.want)
		}
		if changed := cmp.Diff(before, f.backend.snapshot()) != ""; changed != (tt.want == "") {
			t.Errorf("%s: backend changed = %v", tt.name, changed)
		}
	}
}

// TestUntrustedAgent checks that a process whose executable is not a
// trusted agent can neither register an agent nor answer a prompt, even
// about its own process, while it may still read.
func TestUntrustedAgent(t *testing.T) {
	f := newFixture(t)
	f.seed(t)
	c := f.client(t, testbus.UserDesktop, f.untrusted)
	if r := c.do("agent", "/agent"); !strings.Contains(r, errNotAuthorized) {
		t.Errorf("RegisterAgent from an untrusted executable = %s, want %s", r, errNotAuthorized)
	}
	if n := f.server.Agents(); n != 0 {
		t.Errorf("%d agents registered, want 0", n)
	}
	before := f.backend.snapshot()
	if got := c.call("Answer", promptID(c.user.UID), "allow", "once"); got != errNotAuthorized {
		t.Errorf("Answer from an untrusted executable = %q, want %q", got, errNotAuthorized)
	}
	if diff := cmp.Diff(before, f.backend.snapshot()); diff != "" {
		t.Errorf("refused Answer changed the backend:\n%s", diff)
	}
	var st dbusapi.Status
	c.callResult(&st, "GetStatus")
}

// TestPromptsReachOwnersAgentsOnly registers agents for two users and
// checks that each prompt goes only to the agents of the user owning the
// process, that root's prompts go to administrators only, and that
// resolving a prompt cancels it where it was shown.
func TestPromptsReachOwnersAgentsOnly(t *testing.T) {
	f := newFixture(t)
	admin := f.client(t, testbus.UserAdmin, f.trusted)
	desktop := f.client(t, testbus.UserDesktop, f.trusted)
	admin.mustOK("agent", "/io/github/aegisfw/Tray", nil)
	desktop.mustOK("agent", "/io/github/aegisfw/Tray", nil)
	if n := f.server.Agents(); n != 2 {
		t.Fatalf("%d agents registered, want 2", n)
	}
	ctx := context.Background()
	// A prompt reaching the wrong agent arrives before the right agent's
	// reply returns, so after PromptAgents a short wait suffices to see it.
	const stray = 300 * time.Millisecond

	send := func(id string, uid uint32, wantDelivered int) {
		t.Helper()
		n, err := f.server.PromptAgents(ctx, dbusapi.Prompt{ID: id, UID: uid, Exe: "/usr/bin/curl", Lineage: []string{"bash", "curl"}})
		if err != nil || n != wantDelivered {
			t.Fatalf("PromptAgents(%s) = %d, %v; want %d", id, n, err, wantDelivered)
		}
	}
	expect := func(c *client, kind, id string) {
		t.Helper()
		e := c.nextEvent(replyTimeout)
		if !strings.HasPrefix(e, kind+" ") || !strings.Contains(e, `"`+id+`"`) {
			t.Fatalf("%s's agent got %q, want %s %s", c.user.Name, e, kind, id)
		}
	}
	none := func(c *client) {
		t.Helper()
		if e := c.nextEvent(stray); e != "" {
			t.Errorf("%s's agent got %q, want nothing", c.user.Name, e)
		}
	}

	send("for-desktop", desktop.user.UID, 1)
	expect(desktop, "prompt", "for-desktop")
	none(admin)

	send("for-admin", admin.user.UID, 1)
	expect(admin, "prompt", "for-admin")
	none(desktop)

	send("for-root", 0, 1)
	expect(admin, "prompt", "for-root")
	none(desktop)

	nobody := testbus.EnsureUser(t, testbus.UserPlain)
	send("for-plain", nobody.UID, 0)
	none(admin)
	none(desktop)

	if err := f.server.ResolvePrompt(ctx, "for-desktop", dbusapi.Allow); err != nil {
		t.Fatal(err)
	}
	expect(desktop, "cancel", "for-desktop")
	none(admin)

	desktop.mustOK("unagent", "/io/github/aegisfw/Tray", nil)
	if r := desktop.do("unagent", "/io/github/aegisfw/Tray"); !strings.Contains(r, errNotFound) {
		t.Errorf("second UnregisterAgent = %s, want %s", r, errNotFound)
	}
	send("after-unregister", desktop.user.UID, 0)
	none(desktop)
}

// TestAgentForgeryRefused checks the bus policy: a user cannot call
// another user's agent, nor own the helper's name.
func TestAgentForgeryRefused(t *testing.T) {
	testenv.RequireTool(t, "dbus-send")
	f := newFixture(t)
	admin := f.client(t, testbus.UserAdmin, f.trusted)
	admin.mustOK("agent", "/io/github/aegisfw/Tray", nil)

	u := testbus.EnsureUser(t, testbus.UserDesktop)
	out, err := f.bus.Command(u, "dbus-send", "--system", "--print-reply", "--dest="+admin.name,
		"/io/github/aegisfw/Tray", dbusapi.AgentInterface+".Cancel", "string:x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AccessDenied") {
		t.Errorf("a user calling another user's agent: %v %s, want AccessDenied", err, out)
	}
	out, err = f.bus.Command(u, "dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus",
		"/org/freedesktop/DBus", "org.freedesktop.DBus.RequestName", "string:"+dbusapi.BusName, "uint32:4").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "AccessDenied") {
		t.Errorf("a user owning %s: %v %s, want AccessDenied", dbusapi.BusName, err, out)
	}
	if e := admin.nextEvent(300 * time.Millisecond); e != "" {
		t.Errorf("agent got %q from a forged call", e)
	}
}

// TestAgentLeavesBus checks that an agent whose client exits is
// unregistered, including a client that exits while its RegisterAgent
// call is still being handled.
func TestAgentLeavesBus(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, testbus.UserDesktop, f.trusted)
	c.mustOK("agent", "/io/github/aegisfw/Tray", nil)
	if n := f.server.Agents(); n != 1 {
		t.Fatalf("%d agents, want 1", n)
	}
	c.child.Kill()
	testbus.WaitFor(t, replyTimeout, "the agent to be unregistered", func() bool { return f.server.Agents() == 0 })

	for i := range 10 {
		c := f.client(t, testbus.UserDesktop, f.trusted)
		c.child.Send(t, `register-and-exit "/io/github/aegisfw/Tray"`)
		if err := c.child.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		// The server is done with the call once it logged the outcome:
		// a failed call, or a registration undone when the name vanished.
		testbus.WaitFor(t, replyTimeout, "the server to finish RegisterAgent", func() bool {
			return f.logs.hasLine("sender="+c.name+" ", "method=RegisterAgent") ||
				f.logs.hasLine("sender="+c.name+" ", `msg="agent left the bus"`)
		})
		if n := f.server.Agents(); n != 0 {
			t.Fatalf("round %d: %d agents left registered by a vanished client", i, n)
		}
	}
}

// TestSignalsAndIntrospection checks that the served introspection data
// is introspect.xml and that signals and the Mode property reach a
// Client.
func TestSignalsAndIntrospection(t *testing.T) {
	f := newFixture(t)
	conn := f.bus.Conn(t)
	var xmlData string
	if err := conn.Object(dbusapi.BusName, dbusapi.ObjectPath).Call("org.freedesktop.DBus.Introspectable.Introspect", 0).Store(&xmlData); err != nil {
		t.Fatal(err)
	}
	if xmlData != dbusapi.IntrospectXML {
		t.Error("served introspection data differs from introspect.xml")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl := dbusapi.NewClient(conn, false)
	events, err := cl.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	emits := []func() error{
		func() error { return f.server.ModeChanged(dbusapi.Learning) },
		f.server.AppsChanged,
		func() error { return f.server.HashChanged("/usr/bin/curl", dbusapi.HashChanged) },
		f.server.RulesChanged,
		func() error { return f.server.Tampered("/etc/aegis/rules.toml", "/etc/aegis/rules.toml.rejected-1") },
		func() error { return f.server.ResolvePrompt(ctx, "p-1", dbusapi.Deny) },
	}
	for _, e := range emits {
		if err := e(); err != nil {
			t.Fatal(err)
		}
	}
	want := []dbusapi.Event{
		{Kind: "ModeChanged", Mode: dbusapi.Learning},
		{Kind: "AppsChanged"},
		{Kind: "HashChanged", Path: "/usr/bin/curl", State: dbusapi.HashChanged},
		{Kind: "RulesChanged"},
		{Kind: "Tampered", Path: "/etc/aegis/rules.toml", Rejected: "/etc/aegis/rules.toml.rejected-1"},
		{Kind: "PromptResolved", PromptID: "p-1", Verdict: dbusapi.Deny},
	}
	var got []dbusapi.Event
	for len(got) < len(want) {
		select {
		case ev := <-events:
			got = append(got, ev)
		case <-time.After(replyTimeout):
			t.Fatalf("got %d of %d events: %+v", len(got), len(want), got)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if m, err := cl.Mode(ctx); err != nil || m != dbusapi.Learning {
		t.Errorf("Mode property = %q, %v; want learning", m, err)
	}
}

// chanAgent forwards prompts to a channel.
type chanAgent chan dbusapi.Prompt

func (a chanAgent) Prompt(p dbusapi.Prompt) { a <- p }
func (a chanAgent) Cancel(string)           {}

// BenchmarkPromptAgents measures delivering a prompt to a registered
// agent (agent lookup, the Agent.Prompt call, the PromptRequested signal),
// reported as a ratio to calling the agent's Cancel directly (the same
// round trips minus the Server's work) measured in the same run.
func BenchmarkPromptAgents(b *testing.B) {
	bus := testbus.Start(b, testbus.Options{
		PolicyFiles: []string{testbus.ModuleFile(b, "systemd/io.github.aegisfw.Aegis1.conf")},
	})
	srvConn := bus.Conn(b)
	log := slog.New(slog.DiscardHandler)
	srv, err := dbusapi.NewServer(srvConn, dbusapi.Config{
		Backend:    newMemBackend(),
		Authorizer: authz.New(srvConn, log),
		Logger:     log,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := srv.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	agentConn := bus.Conn(b)
	got := make(chanAgent, 1)
	if err := dbusapi.NewClient(agentConn, false).RegisterAgent(ctx, "/agent", got); err != nil {
		b.Fatal(err)
	}
	peer := srvConn.Object(agentConn.Names()[0], "/agent")

	const n = 500
	start := time.Now()
	for range n {
		if err := peer.Call(dbusapi.AgentInterface+".Cancel", 0, "x").Err; err != nil {
			b.Fatal(err)
		}
	}
	baseline := time.Since(start) / n

	p := dbusapi.Prompt{ID: "bench", UID: 0, Exe: "/usr/bin/curl", Lineage: []string{"bash", "curl"}, Addr: "192.0.2.1", Port: 443}
	b.ResetTimer()
	for b.Loop() {
		if n, err := srv.PromptAgents(ctx, p); err != nil || n != 1 {
			b.Fatalf("PromptAgents = %d, %v", n, err)
		}
		<-got
	}
	b.StopTimer()
	perOp := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(baseline.Microseconds()), "baseline-µs")
	b.ReportMetric(float64(perOp)/float64(baseline), "x-baseline")
}
