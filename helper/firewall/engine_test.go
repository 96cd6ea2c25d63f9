package firewall

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/proc"
	"github.com/aegisfw/aegis/helper/rules"
	"github.com/aegisfw/aegis/helper/rulestore"
	"github.com/aegisfw/aegis/internal/kerneltest"
	"github.com/aegisfw/aegis/internal/testenv"
)

// clientEnv makes the test binary a client that connects once per line
// of its standard input ("DST TIMEOUT_MS") and prints one JSON
// kerneltest.Result per attempt: one process, many connections.
const clientEnv = "AEGIS_FIREWALLTEST_CLIENT"

func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		os.Exit(runClient())
	}
	kerneltest.Main(m)
}

func runClient() int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var dst string
		var ms int
		if _, err := fmt.Sscan(sc.Text(), &dst, &ms); err != nil {
			return 2
		}
		ap := netip.MustParseAddrPort(dst)
		r := kerneltest.Result{Op: "connect", Dst: dst, PID: os.Getpid()}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 3
		}
		tv := unix.NsecToTimeval(int64(time.Duration(ms) * time.Millisecond))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		r.T0 = kerneltest.Monotonic()
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
		r.T1 = kerneltest.Monotonic()
		if err != nil {
			r.Err = unix.ErrnoName(err.(unix.Errno))
		}
		unix.Close(fd)
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
	}
	return 0
}

// client is a running multi-connect client in the fixture's cgroup.
type client struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	PID int
}

func (f *fixture) startClient(t testing.TB) *client {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(f.cg.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return &client{cmd: cmd, in: in, out: bufio.NewScanner(out), PID: cmd.Process.Pid}
}

// connect asks the client for one connection and returns its result.
func (c *client) connect(t testing.TB, dst netip.AddrPort, ms int) kerneltest.Result {
	t.Helper()
	fmt.Fprintf(c.in, "%s %d\n", dst, ms)
	if !c.out.Scan() {
		t.Fatalf("client %d ended: %v", c.PID, c.out.Err())
	}
	var r kerneltest.Result
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// exit ends the client and waits for it.
func (c *client) exit() {
	c.in.Close()
	c.cmd.Wait()
}

// prompter records prompts; agents is what PromptAgents returns.
type prompter struct {
	agents  atomic.Int32
	mu      sync.Mutex
	prompts []dbusapi.Prompt
	at      []int64 // CLOCK_MONOTONIC when each prompt arrived
	done    map[string]dbusapi.Verdict
	changed chan struct{}
	// answer, when set, is called with each prompt in a new goroutine.
	answer func(dbusapi.Prompt)
}

func newPrompter() *prompter {
	p := &prompter{done: map[string]dbusapi.Verdict{}, changed: make(chan struct{}, 1)}
	p.agents.Store(1)
	return p
}

func (p *prompter) PromptAgents(_ context.Context, m dbusapi.Prompt) (int, error) {
	now := kerneltest.Monotonic()
	p.mu.Lock()
	p.prompts = append(p.prompts, m)
	p.at = append(p.at, now)
	fn := p.answer
	p.mu.Unlock()
	p.signal()
	if fn != nil {
		go fn(m)
	}
	return int(p.agents.Load()), nil
}

func (p *prompter) ResolvePrompt(_ context.Context, id string, v dbusapi.Verdict) error {
	p.mu.Lock()
	p.done[id] = v
	p.mu.Unlock()
	p.signal()
	return nil
}

func (p *prompter) signal() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *prompter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.prompts)
}

// wait waits for a prompt matching match.
func (p *prompter) wait(t testing.TB, what string, match func(dbusapi.Prompt) bool) dbusapi.Prompt {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		for _, m := range p.prompts {
			if match(m) {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.changed:
		case <-deadline:
			t.Fatalf("no prompt: %s", what)
		}
	}
}

// resolved waits up to 5 s for prompt id to be withdrawn and returns the
// verdict it was withdrawn with. (The kernel acts on a decision before the
// prompt is withdrawn, so a client may see the result first.)
func (p *prompter) resolved(id string) (dbusapi.Verdict, bool) {
	deadline := time.After(5 * time.Second)
	for {
		p.mu.Lock()
		v, ok := p.done[id]
		p.mu.Unlock()
		if ok {
			return v, true
		}
		select {
		case <-p.changed:
		case <-deadline:
			return "", false
		}
	}
}

// fixture is an engine on a real datapath attached to a fresh child
// cgroup, with a rule store in a temporary directory and a TCP listener
// on 127.0.0.1 outside the cgroup.
type fixture struct {
	e         *Engine
	dp        *bpf.Datapath
	cg        *kerneltest.Cgroup
	store     *rulestore.Store
	rulesFile string
	pr        *prompter
	tcp       netip.AddrPort
	self      string
	stop      func()
}

type options struct {
	set     *rules.Set
	timeout time.Duration
	noRun   bool
}

// logWriter sends log lines to t until the test ends.
type logWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *logWriter) Write(b []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}

func newFixture(t testing.TB, o options) *fixture {
	t.Helper()
	kerneltest.Require(t)
	lw := &logWriter{t: t}
	t.Cleanup(func() { lw.done.Store(true) })
	log := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if testing.Short() || !testing.Verbose() {
		log = slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	f := &fixture{cg: kerneltest.NewCgroup(t), pr: newPrompter()}
	var err error
	if f.self, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	f.dp, err = bpf.Open(bpf.Options{Cgroup: f.cg.Path, Unpinned: true, Logger: log})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() { f.dp.Close() })
	dir := t.TempDir()
	f.rulesFile = filepath.Join(dir, "etc", "rules.toml")
	f.store = rulestore.New(rulestore.Config{
		RulesFile: f.rulesFile,
		DropInDir: filepath.Join(dir, "etc", "rules.d"),
		StateDir:  filepath.Join(dir, "state"),
		Logger:    log,
	})
	if o.set != nil {
		if _, err := f.store.Load(); err != nil {
			t.Fatal(err)
		}
		if err := f.store.Write(o.set); err != nil {
			t.Fatal(err)
		}
	}
	reg, err := apps.New(apps.Config{Logger: log}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	f.e, err = New(Config{Datapath: f.dp, Registry: reg, Store: f.store, Logger: log, PromptTimeout: o.timeout})
	if err != nil {
		t.Fatalf("new engine: %v", err)
	}
	f.e.SetPrompter(f.pr)
	f.tcp = kerneltest.ListenTCP(t, "127.0.0.1:0")
	if !o.noRun {
		f.run(t)
	}
	return f
}

// run starts the engine and waits until it watches the datapath.
func (f *fixture) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.e.Run(ctx) }()
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(f.stop)
	select {
	case <-f.e.watching:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("engine did not start")
	}
}

func sha256Of(t testing.TB, path string) string {
	t.Helper()
	s, err := hashPath(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// allowSet is a rule set allowing path for every user.
func allowSet(t testing.TB, path string) *rules.Set {
	s := rules.Default()
	s.Apps = []rules.App{{Path: path, SHA256: sha256Of(t, path), UID: rules.AnyUser, Verdict: rules.Allow}}
	return s
}

// waitFor waits for cond with a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) answer(t testing.TB, id string, v dbusapi.Verdict, s dbusapi.Scope) {
	t.Helper()
	if err := f.e.Answer(context.Background(), dbusapi.Answer{ID: id, Verdict: v, Scope: s}); err != nil {
		t.Fatalf("answer %s: %v", id, err)
	}
}

func byPID(pid int) func(dbusapi.Prompt) bool {
	return func(p dbusapi.Prompt) bool { return p.PID == uint32(pid) }
}

var noOpts kerneltest.Options

func TestKnownAppConnectsWithoutPrompt(t *testing.T) {
	self, _ := os.Executable()
	f := newFixture(t, options{set: allowSet(t, self)})
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "" {
		t.Fatalf("known app: %s", r.Err)
	}
	// Without the pre-warmed key the kernel holds the connection and the
	// engine decides it by verifying the process: still no prompt.
	key := bpf.ExeKeyOf(kerneltest.ExeStat(t, self))
	if err := f.dp.DeleteApp(key, bpf.AnyUID); err != nil {
		t.Fatal(err)
	}
	c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "5000")
	if r := c.Next(t); r.Err != "" {
		t.Fatalf("known app decided by verification: %s", r.Err)
	}
	c.Wait(t)
	if n := f.pr.count(); n != 0 {
		t.Errorf("%d prompts for a known app, want 0", n)
	}
	flows, _ := f.e.Flows(context.Background())
	found := false
	for _, fl := range flows {
		if fl.PID == uint32(c.PID) && fl.Reason == howRule && fl.Verdict == dbusapi.Allow && fl.Exe == self {
			found = true
		}
	}
	if !found {
		t.Errorf("flows %+v: want an allow by rule for pid %d", flows, c.PID)
	}
}

func TestUnknownAppPrompted(t *testing.T) {
	tests := []struct {
		name    string
		verdict dbusapi.Verdict
		wantErr string
	}{
		{"allow once completes the connection", dbusapi.Allow, ""},
		{"deny once aborts it", dbusapi.Deny, "ECONNABORTED"},
	}
	f := newFixture(t, options{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
			p := f.pr.wait(t, "held connect", byPID(c.PID))
			checks := []struct {
				name      string
				got, want any
			}{
				{"exe", p.Exe, f.self},
				{"uid", p.UID, uint32(0)},
				{"addr", p.Addr, "127.0.0.1"},
				{"port", p.Port, f.tcp.Port()},
				{"proto", p.Proto, "tcp"},
				{"changed", p.Changed, false},
				{"lineage ends with the client", len(p.Lineage) >= 2 && p.Lineage[len(p.Lineage)-1] == fmt.Sprintf("%s (%d)", f.self, c.PID), true},
				{"lineage has the test process", contains(p.Lineage, fmt.Sprintf("%s (%d)", f.self, os.Getpid())), true},
				{"time", p.Time > 0, true},
			}
			for _, ck := range checks {
				if ck.got != ck.want {
					t.Errorf("%s = %v, want %v (prompt %+v)", ck.name, ck.got, ck.want, p)
				}
			}
			f.answer(t, p.ID, tt.verdict, dbusapi.Once)
			r := c.Next(t)
			c.Wait(t)
			if r.Err != tt.wantErr {
				t.Errorf("connect after %s: err %q, want %q", tt.verdict, r.Err, tt.wantErr)
			}
			if v, ok := f.pr.resolved(p.ID); !ok || v != tt.verdict {
				t.Errorf("prompt resolved %v %v, want %v", v, ok, tt.verdict)
			}
		})
	}
}

func TestUnansweredPromptDeniedAtTimeout(t *testing.T) {
	f := newFixture(t, options{timeout: time.Second})
	c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
	p := f.pr.wait(t, "held connect", byPID(c.PID))
	r := c.Next(t)
	c.Wait(t)
	if r.Err != "ECONNABORTED" {
		t.Errorf("unanswered: err %q, want ECONNABORTED", r.Err)
	}
	// The kernel aborts the socket before the prompt is withdrawn and
	// counted: wait for both.
	var cs dbusapi.Counters
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if cs, err = f.e.Counters(context.Background()); err != nil {
			t.Fatal(err)
		}
		v, ok := f.pr.resolved(p.ID)
		if ok && v == dbusapi.Deny && cs.TimedOut == 1 && cs.Held == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prompt resolved %v %v, counters %+v: want deny, 1 held, 1 timed out", v, ok, cs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := f.e.Answer(context.Background(), dbusapi.Answer{ID: p.ID, Verdict: dbusapi.Allow, Scope: dbusapi.Once}); !errors.Is(err, dbusapi.ErrNotFound) {
		t.Errorf("answer after the timeout: %v, want ErrNotFound", err)
	}
}

func TestNoAgentDeniesAtOnceWhenConfigured(t *testing.T) {
	s := rules.Default()
	s.Settings.NoAgent = rules.NoAgentDeny
	f := newFixture(t, options{set: s})
	f.pr.agents.Store(0)
	r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "10000")
	if r.Err != "ECONNABORTED" {
		t.Errorf("no agent, policy deny: err %q, want ECONNABORTED", r.Err)
	}
	if d := time.Duration(r.T1 - r.T0); d > 5*time.Second {
		t.Errorf("denied after %v, want at once", d)
	}
}

func TestAlwaysPersistsRule(t *testing.T) {
	tests := []struct {
		scope dbusapi.Scope
		uid   uint32
	}{
		{dbusapi.Always, 0},
		{dbusapi.AlwaysAllUsers, rules.AnyUser},
	}
	for _, tt := range tests {
		t.Run(string(tt.scope), func(t *testing.T) {
			f := newFixture(t, options{})
			c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
			p := f.pr.wait(t, "held connect", byPID(c.PID))
			f.answer(t, p.ID, dbusapi.Allow, tt.scope)
			if r := c.Next(t); r.Err != "" {
				t.Fatalf("connect after %s: %s", tt.scope, r.Err)
			}
			c.Wait(t)
			set, err := rules.Parse(f.rulesFile, mustRead(t, f.rulesFile))
			if err != nil {
				t.Fatal(err)
			}
			want := []rules.App{{Path: f.self, SHA256: sha256Of(t, f.self), UID: tt.uid, Verdict: rules.Allow}}
			var got []rules.App
			for _, a := range set.Apps {
				got = append(got, rules.App{Path: a.Path, SHA256: a.SHA256, UID: a.UID, Verdict: a.Verdict})
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("rule file apps (-want +got):\n%s", d)
			}
			if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "" {
				t.Errorf("second connection: %s", r.Err)
			}
			if n := f.pr.count(); n != 1 {
				t.Errorf("%d prompts, want 1", n)
			}
		})
	}
}

func TestUntilQuitCoversOnlyThatProcess(t *testing.T) {
	f := newFixture(t, options{})
	c1 := f.startClient(t)
	res := make(chan kerneltest.Result, 1)
	go func() { res <- c1.connect(t, f.tcp, 10000) }()
	p := f.pr.wait(t, "first process", byPID(c1.PID))
	f.answer(t, p.ID, dbusapi.Allow, dbusapi.UntilQuit)
	if r := <-res; r.Err != "" {
		t.Fatalf("first connect: %s", r.Err)
	}
	if r := c1.connect(t, f.tcp, 5000); r.Err != "" {
		t.Fatalf("second connect of the same process: %s", r.Err)
	}
	if n := f.pr.count(); n != 1 {
		t.Fatalf("%d prompts after two connects of one process, want 1", n)
	}
	c1.exit()
	waitFor(t, "until-quit rule dropped", func() bool {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		return len(f.e.untilQuit) == 0
	})
	c2 := f.startClient(t)
	go func() { res <- c2.connect(t, f.tcp, 10000) }()
	p2 := f.pr.wait(t, "new process", byPID(c2.PID))
	f.answer(t, p2.ID, dbusapi.Deny, dbusapi.Once)
	if r := <-res; r.Err != "ECONNABORTED" {
		t.Errorf("new process denied once: err %q, want ECONNABORTED", r.Err)
	}
}

func TestPromptsCoalesce(t *testing.T) {
	f := newFixture(t, options{})
	const n = 5
	c := f.cg.Start(t, noOpts, "connectmany", f.tcp.String(), fmt.Sprint(n))
	if r := c.Next(t); r.Err != "" {
		t.Fatal(r.Err)
	}
	p := f.pr.wait(t, "held connects", byPID(c.PID))
	waitFor(t, "all requests attached", func() bool {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		q := f.e.prompts[p.ID]
		return q != nil && len(q.reqs) == n
	})
	if got := f.pr.count(); got != 1 {
		t.Errorf("%d prompts for %d held connects, want 1", got, n)
	}
	f.answer(t, p.ID, dbusapi.Deny, dbusapi.Once)
	cs, _ := f.e.Counters(context.Background())
	if cs.Held != n || cs.Denied < n {
		t.Errorf("counters %+v: want %d held and denied", cs, n)
	}
	c.Wait(t)
}

func TestChangedBinaryPromptSaysSo(t *testing.T) {
	dir := t.TempDir()
	cp := kerneltest.CopyExecutable(t, dir)
	f := newFixture(t, options{set: allowSet(t, cp)})
	fh, err := os.OpenFile(cp, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.Write([]byte{0})
	fh.Close()
	c := f.cg.Start(t, kerneltest.Options{Exe: cp}, "connect", f.tcp.String(), "10000")
	p := f.pr.wait(t, "modified binary", byPID(c.PID))
	if !p.Changed || p.Exe != cp || !strings.Contains(p.Note, "changed") {
		t.Errorf("prompt %+v: want changed with a note", p)
	}
	f.answer(t, p.ID, dbusapi.Deny, dbusapi.Once)
	c.Next(t)
	waitFor(t, "hash state changed", func() bool {
		as, _ := f.e.Apps(context.Background())
		return len(as) == 1 && as[0].HashState == dbusapi.HashChanged
	})
}

func TestLearningRecordsAndAdopts(t *testing.T) {
	f := newFixture(t, options{})
	sig := &signals{tampered: make(chan string, 4)}
	f.e.SetSignals(sig)
	if err := f.e.SetMode(context.Background(), dbusapi.Learning); err != nil {
		t.Fatal(err)
	}
	// The client stays alive while the engine verifies it: a process
	// that is gone by then cannot be attributed.
	c := f.startClient(t)
	if r := c.connect(t, f.tcp, 5000); r.Err != "" {
		t.Fatalf("learning mode connect: %s", r.Err)
	}
	var l dbusapi.Learned
	waitFor(t, "learned app", func() bool {
		ls, _ := f.e.Learned(context.Background())
		if len(ls) == 1 {
			l = ls[0]
		}
		return len(ls) == 1
	})
	c.exit()
	if l.Path != f.self || l.UID != 0 || len(l.Lineage) < 2 || !contains(l.Dests, f.tcp.String()+"/tcp") {
		t.Errorf("learned %+v", l)
	}
	if sig.apps.Load() == 0 {
		t.Error("learning an app sent no AppsChanged signal")
	}
	if n := f.pr.count(); n != 0 {
		t.Errorf("%d prompts in learning mode", n)
	}
	if err := f.e.AdoptLearned(context.Background(), []string{f.self}); err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse("rules", mustRead(t, f.rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	if set.Settings.Mode != rules.Learning || len(set.Apps) != 1 || set.Apps[0].Path != f.self ||
		set.Apps[0].SHA256 != sha256Of(t, f.self) || set.Apps[0].Verdict != rules.Allow {
		t.Errorf("rule file after adopting: %+v", set)
	}
	if ls, _ := f.e.Learned(context.Background()); len(ls) != 0 {
		t.Errorf("learned after adopting: %+v", ls)
	}
	// Back in enforce mode the adopted app connects without a prompt.
	if err := f.e.SetMode(context.Background(), dbusapi.Enforce); err != nil {
		t.Fatal(err)
	}
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "" {
		t.Errorf("adopted app: %s", r.Err)
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHostnameFromDNSAnswer(t *testing.T) {
	// The resolving app is known; an unknown app of the same user then
	// connects to the address the answer named.
	self, _ := os.Executable()
	f := newFixture(t, options{set: allowSet(t, self)})
	srv := serveDNS(t, "127.0.0.2:53", netip.MustParseAddr("127.0.0.1")) // bpf tests serve on 127.0.0.1:53
	if r := f.cg.Run(t, noOpts, "dns", srv.String(), "aegis.example."); r.Err != "" || r.N == 0 {
		t.Fatalf("dns query: %+v", r)
	}
	waitFor(t, "answer cached", func() bool {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		return f.e.hostLocked(0, netip.MustParseAddr("127.0.0.1")) != ""
	})
	cp := kerneltest.CopyExecutable(t, t.TempDir())
	c := f.cg.Start(t, kerneltest.Options{Exe: cp}, "connect", f.tcp.String(), "10000")
	p := f.pr.wait(t, "unknown copy", byPID(c.PID))
	if p.Host != "aegis.example" {
		t.Errorf("prompt host %q, want aegis.example", p.Host)
	}
	f.answer(t, p.ID, dbusapi.Deny, dbusapi.Once)
	c.Next(t)
}

func TestHostnameRuleDecidedInKernel(t *testing.T) {
	// An app refused everywhere but at aegis.example: once its lookup of
	// the name is captured, its connections to the answer's address are
	// allowed by the kernel, without a hold or a prompt; other addresses
	// stay refused.
	self, _ := os.Executable()
	set := rules.Default()
	set.Apps = []rules.App{{Path: self, SHA256: sha256Of(t, self), UID: rules.AnyUser, Verdict: rules.Deny,
		Dests: []rules.DestRule{
			{Host: "aegis.example", Verdict: rules.Allow},
			{Port: 53, Proto: rules.UDP, Verdict: rules.Allow}, // its resolver
		}}}
	f := newFixture(t, options{set: set})
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "EPERM" {
		t.Fatalf("before the lookup: err %q, want EPERM", r.Err)
	}
	srv := serveDNS(t, "127.0.0.3:53", netip.MustParseAddr("127.0.0.1")) // other tests serve on .1 and .2
	if r := f.cg.Run(t, noOpts, "dns", srv.String(), "aegis.example."); r.Err != "" || r.N == 0 {
		t.Fatalf("dns query: %+v", r)
	}
	waitFor(t, "hostname rule pushed", func() bool {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		return len(f.e.kernel.hosts) == 1
	})
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "" {
		t.Errorf("after the lookup: err %q, want a connection", r.Err)
	}
	other := kerneltest.ListenTCP(t, "127.0.0.4:0")
	if r := f.cg.Run(t, noOpts, "connect", other.String(), "5000"); r.Err != "EPERM" {
		t.Errorf("another address: err %q, want EPERM", r.Err)
	}
	if n := f.pr.count(); n != 0 {
		t.Errorf("%d prompts, want none", n)
	}
	cs, _ := f.e.Counters(context.Background())
	if cs.Held != 0 {
		t.Errorf("%d held requests, want none", cs.Held)
	}
	// Withdrawing the hostname rule withdraws the pushed address.
	set.Apps[0].Dests = set.Apps[0].Dests[1:]
	b, err := rules.Encode(set)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.e.ImportRules(context.Background(), string(b)); err != nil {
		t.Fatal(err)
	}
	f.e.mu.Lock()
	n := len(f.e.kernel.hosts)
	f.e.mu.Unlock()
	if n != 0 {
		t.Errorf("%d hostname addresses still pushed after the rule went", n)
	}
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "EPERM" {
		t.Errorf("after the rule went: err %q, want EPERM", r.Err)
	}
}

// serveDNS answers every A query with addr.
func serveDNS(t *testing.T, listen string, addr netip.Addr) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket("udp", listen)
	if err != nil {
		testenv.Skip(t, fmt.Sprintf("listen on %s: %v", listen, err))
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) == 0 {
				continue
			}
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: q.ID, Response: true},
				Questions: q.Questions,
				Answers: []dnsmessage.Resource{{
					Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body:   &dnsmessage.AResource{A: addr.As4()},
				}},
			}
			b, _ := resp.Pack()
			c.WriteTo(b, from)
		}
	}()
	return netip.MustParseAddrPort(c.LocalAddr().String())
}

func TestProcessExitingDuringVerification(t *testing.T) {
	f := newFixture(t, options{noRun: true})
	var hooked atomic.Int32
	f.e.beforeVerify = func(ev bpf.Event) {
		// The process dies and becomes a zombie before it is verified.
		syscall.Kill(int(ev.PID), syscall.SIGKILL)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			st, err := proc.FS{}.Stat(int(ev.PID))
			if err != nil || st.State == "Z" {
				break
			}
			time.Sleep(time.Millisecond)
		}
		hooked.Add(1)
	}
	f.run(t)
	c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
	waitFor(t, "held request dropped", func() bool {
		f.e.mu.Lock()
		defer f.e.mu.Unlock()
		return hooked.Load() > 0 && len(f.e.requests) == 0
	})
	if n := f.pr.count(); n != 0 {
		t.Errorf("%d prompts for a process that exited, want 0", n)
	}
	_ = c
}

func TestRestartDropsStaleKernelEntries(t *testing.T) {
	f := newFixture(t, options{noRun: true})
	// A helper killed with SIGKILL leaves what it pushed in the pinned
	// maps: here an allow for the client's executable (an until-quit
	// answer, say) and a hostname address.
	key := bpf.ExeKeyOf(kerneltest.ExeStat(t, f.self))
	if err := f.dp.SetApp(key, 0, bpf.App{ID: 99, Verdict: bpf.VerdictAllow, HasDests: true}); err != nil {
		t.Fatal(err)
	}
	stale := bpf.Dest{AppID: 99, Prefix: netip.MustParsePrefix("192.0.2.1/32")}
	if err := f.dp.SetDest(stale, bpf.VerdictAllow); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if es, err := f.dp.Apps(); err != nil || len(es) != 0 {
		t.Errorf("kernel apps after start: %+v %v; want none", es, err)
	}
	if ds, err := f.dp.Dests(); err != nil || len(ds) != 0 {
		t.Errorf("kernel destination rules after start: %+v %v; want none", ds, err)
	}
	c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
	p := f.pr.wait(t, "asked again", byPID(c.PID))
	f.answer(t, p.ID, dbusapi.Deny, dbusapi.Once)
	if r := c.Next(t); r.Err != "ECONNABORTED" {
		t.Errorf("denied after restart: err %q", r.Err)
	}
}

func TestShortLivedAppLearnedOnItsNextRun(t *testing.T) {
	f := newFixture(t, options{noRun: true})
	var first atomic.Bool
	first.Store(true)
	f.e.beforeVerify = func(ev bpf.Event) {
		if first.CompareAndSwap(true, false) {
			// The first run is gone before the engine looks at it.
			waitFor(t, "client exit", func() bool {
				st, err := proc.FS{}.Stat(int(ev.PID))
				return err != nil || st.State == "Z"
			})
		}
	}
	f.run(t)
	if err := f.e.SetMode(context.Background(), dbusapi.Learning); err != nil {
		t.Fatal(err)
	}
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "2000"); r.Err != "" {
		t.Fatalf("first run: %s", r.Err)
	}
	waitFor(t, "first run handled", func() bool { return !first.Load() })
	time.Sleep(100 * time.Millisecond) // the first report is settled
	if ls, _ := f.e.Learned(context.Background()); len(ls) != 0 {
		t.Fatalf("learned %+v from a process that was gone", ls)
	}
	// The next run of the same app to the same destination is reported
	// again and learned.
	c := f.startClient(t)
	if r := c.connect(t, f.tcp, 5000); r.Err != "" {
		t.Fatalf("second run: %s", r.Err)
	}
	waitFor(t, "learned on the second run", func() bool {
		ls, _ := f.e.Learned(context.Background())
		return len(ls) == 1 && ls[0].Path == f.self
	})
	c.exit()
}

func TestReconciledDuplicateNotPromptedTwice(t *testing.T) {
	f := newFixture(t, options{})
	c := f.cg.Start(t, noOpts, "connect", f.tcp.String(), "10000")
	p := f.pr.wait(t, "held connect", byPID(c.PID))
	pend, err := f.dp.Pending()
	if err != nil || len(pend) == 0 {
		t.Fatalf("pending: %v %v", pend, err)
	}
	for _, ev := range pend {
		f.e.onConnection(ev) // what Watch delivers after a ring buffer overflow
	}
	f.answer(t, p.ID, dbusapi.Deny, dbusapi.Once)
	for _, ev := range pend {
		f.e.onConnection(ev) // a stale copy read before the decision
	}
	c.Next(t)
	c.Wait(t)
	f.e.mu.Lock()
	n := len(f.e.requests)
	f.e.mu.Unlock()
	if got := f.pr.count(); got != 1 || n != 0 {
		t.Errorf("%d prompts and %d open requests after duplicates, want 1 and 0", got, n)
	}
}
