package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/aegisfw/aegis/helper/daemon"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/kerneltest"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/aegisfw/aegis/internal/testenv"
)

// Roles the test binary plays when re-executed.
const (
	// daemonEnv holds the JSON daemonSpec of a helper subprocess.
	daemonEnv = "AEGIS_E2E_DAEMON"
	// roleAgent is the testbus child role of a prompt agent.
	roleAgent = "agent"
	// floodEnv makes the binary a connection flood client (see runFlood).
	floodEnv = "AEGIS_E2E_FLOOD"
	// idleEnv makes the binary an idle Go process with a 1 s ticker, the
	// wake-up baseline.
	idleEnv = "AEGIS_E2E_IDLE"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(daemonEnv) != "":
		os.Exit(runDaemon(os.Getenv(daemonEnv)))
	case os.Getenv(testbus.ChildEnv) == roleAgent:
		os.Exit(runAgent())
	case os.Getenv(floodEnv) != "":
		os.Exit(runFlood(os.Getenv(floodEnv)))
	case os.Getenv(idleEnv) != "":
		runIdle()
	}
	kerneltest.Main(m)
}

// waitTimeout bounds waits for things that happen within a second or two.
const waitTimeout = 15 * time.Second

// env is one helper's world: a private bus with polkitd, a child cgroup,
// a private bpffs, rule and state directories, a TCP listener outside the
// cgroup, and the executables of the test agent and test clients.
type env struct {
	bus       *testbus.Bus
	cg        *kerneltest.Cgroup
	cfg       daemon.Config
	user      testbus.User // the desktop user owning clients and agent
	agentExe  string
	clientExe string
	tcp       netip.AddrPort
}

func newEnv(t testing.TB) *env {
	t.Helper()
	kerneltest.Require(t)
	bus := testbus.Start(t, testbus.Options{
		PolicyFiles:   []string{testbus.ModuleFile(t, "systemd/io.github.aegisfw.Aegis1.conf")},
		Polkit:        true,
		PolkitActions: []string{testbus.ModuleFile(t, "polkit/io.github.aegisfw.aegis.policy")},
		PolkitRules:   testbus.AegisRules,
	})
	e := &env{
		bus:       bus,
		cg:        kerneltest.NewCgroup(t),
		user:      testbus.EnsureUser(t, testbus.UserDesktop),
		agentExe:  testbus.SharedExecutable(t, "agent"),
		clientExe: kerneltest.SharedCopy(t),
		tcp:       kerneltest.ListenTCP(t, "127.0.0.1:0"),
	}
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc-aegis")
	state := filepath.Join(dir, "var-lib-aegis")
	for _, d := range []string{etc, state} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg = daemon.Config{
		Cgroup:        e.cg.Path,
		PinRoot:       kerneltest.MountBPFFS(t),
		RulesFile:     filepath.Join(etc, "rules.toml"),
		DropInDir:     filepath.Join(etc, "rules.d"),
		StateDir:      state,
		BusAddress:    bus.Addr,
		TrustedAgents: []string{e.agentExe},
		PromptTimeout: 20 * time.Second,
	}
	return e
}

// testLogger logs through t.Log, so lines appear only on failure or -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// client returns a new bus connection as root and an API client on it.
func (e *env) client(t testing.TB) *dbusapi.Client {
	return dbusapi.NewClient(e.bus.Conn(t), false)
}

// waitServing waits until the helper owns its bus name.
func (e *env) waitServing(t testing.TB) {
	t.Helper()
	conn := e.bus.Conn(t)
	testbus.WaitFor(t, waitTimeout, "the helper to own its name", func() bool {
		var has bool
		err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName).Store(&has)
		return err == nil && has
	})
}

// startInProcess runs the helper in this process until t ends.
func (e *env) startInProcess(t testing.TB) {
	t.Helper()
	cfg := e.cfg
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("helper: %v", err)
		}
	})
	e.waitServing(t)
}

// daemonSpec is what a helper subprocess is told.
type daemonSpec struct {
	Config       daemon.Config
	NotifySocket string
}

func runDaemon(spec string) int {
	var s daemonSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "daemon spec:", err)
		return 2
	}
	s.Config.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s.Config.NotifySocket = s.NotifySocket
	ctx, stop := signalContext()
	defer stop()
	if err := daemon.Run(ctx, s.Config); err != nil {
		s.Config.Logger.Error("helper failed", "err", err)
		return 1
	}
	return 0
}

// helperProc is the helper running as a subprocess: the test binary
// re-executed in daemon mode, as aegis-helper would run.
type helperProc struct {
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
	err  error
}

// startSubprocess starts the helper as a subprocess and waits until it
// serves. It is killed at cleanup if still running.
func (e *env) startSubprocess(t testing.TB, notifySocket string) *helperProc {
	t.Helper()
	spec, err := json.Marshal(daemonSpec{Config: e.cfg, NotifySocket: notifySocket})
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), daemonEnv+"="+string(spec))
	h := &helperProc{cmd: cmd, out: &testenv.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = h.out, h.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	go func() { h.err = cmd.Wait(); close(h.done) }()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-h.done
		if t.Failed() || testing.Verbose() {
			t.Logf("helper %d output:\n%s", cmd.Process.Pid, h.out.String())
		}
	})
	e.waitServing(t)
	return h
}

// stop sends sig and waits for the helper to exit.
func (h *helperProc) stop(t testing.TB, sig syscall.Signal) error {
	t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal helper: %v", err)
	}
	select {
	case <-h.done:
		return h.err
	case <-time.After(waitTimeout):
		t.Fatalf("helper did not exit after %v", sig)
	}
	return nil
}

func (h *helperProc) pid() int { return h.cmd.Process.Pid }

// connect starts a blocking TCP connect to the listener from a client in
// the cgroup, running as the desktop user or as root; read its result
// with Next.
func (e *env) connect(t testing.TB, asRoot bool, timeout time.Duration) *kerneltest.Client {
	t.Helper()
	opts := kerneltest.Options{Exe: e.clientExe}
	if !asRoot {
		opts.Credential = &syscall.Credential{Uid: e.user.UID, Gid: e.user.GID}
	}
	return e.cg.Start(t, opts, "connect", e.tcp.String(), fmt.Sprint(timeout.Milliseconds()))
}

// agent is a prompt agent running as the desktop user in a re-executed
// test binary, speaking JSON lines (see runAgent).
type agent struct {
	child *testbus.Child
}

// agentLine is one line an agent child prints.
type agentLine struct {
	Event  string
	Prompt dbusapi.Prompt
	ID     string
	Err    string
	// T is CLOCK_MONOTONIC ns: when the prompt arrived, or just before
	// the answer was sent.
	T int64
}

// startAgent starts the test agent as the desktop user and registers it.
func (e *env) startAgent(t testing.TB) *agent {
	t.Helper()
	a := &agent{child: e.bus.StartChild(t, e.user, e.agentExe, roleAgent)}
	a.register(t)
	return a
}

func (a *agent) register(t testing.TB) {
	t.Helper()
	a.child.Send(t, "register")
	l := a.next(t, waitTimeout, func(l agentLine) bool { return l.Event == "registered" || l.Event == "error" })
	if l.Event == "error" {
		t.Fatalf("register agent: %s", l.Err)
	}
}

// next returns the agent's next line that match accepts.
func (a *agent) next(t testing.TB, timeout time.Duration, match func(agentLine) bool) agentLine {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case s, ok := <-a.child.Lines():
			if !ok {
				t.Fatal("agent exited")
			}
			var l agentLine
			if err := json.Unmarshal([]byte(s), &l); err != nil {
				t.Fatalf("agent line %q: %v", s, err)
			}
			if match(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("agent: nothing expected within %v", timeout)
		}
	}
}

// prompt waits for a prompt about pid.
func (a *agent) prompt(t testing.TB, pid int) agentLine {
	t.Helper()
	return a.next(t, waitTimeout, func(l agentLine) bool { return l.Event == "prompt" && int(l.Prompt.PID) == pid })
}

// answer answers a prompt and returns when the answer was sent.
func (a *agent) answer(t testing.TB, id string, v dbusapi.Verdict, s dbusapi.Scope) int64 {
	t.Helper()
	a.child.Send(t, fmt.Sprintf("answer %s %s %s", id, v, s))
	l := a.next(t, waitTimeout, func(l agentLine) bool { return l.Event == "answered" && l.ID == id })
	if l.Err != "" {
		t.Fatalf("answer %s: %s", id, l.Err)
	}
	return l.T
}

// runAgent is the agent child: it reads commands (register; answer ID
// VERDICT SCOPE) and prints agentLines.
func runAgent() int {
	out := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	emit := func(l agentLine) {
		mu.Lock()
		defer mu.Unlock()
		out.Encode(l)
	}
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		emit(agentLine{Event: "error", Err: err.Error()})
		return 1
	}
	defer conn.Close()
	client := dbusapi.NewClient(conn, false)
	a := &childAgent{emit: emit}
	ctx := context.Background()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 1 && f[0] == "register":
			if err := client.RegisterAgent(ctx, "/io/github/aegisfw/TestAgent", a); err != nil {
				emit(agentLine{Event: "error", Err: err.Error()})
				continue
			}
			emit(agentLine{Event: "registered"})
			// Prompts raised before the registration are still pending.
			ps, err := client.Prompts(ctx)
			if err != nil {
				emit(agentLine{Event: "error", Err: err.Error()})
			}
			for _, p := range ps {
				a.Prompt(p)
			}
		case len(f) == 4 && f[0] == "answer":
			t := kerneltest.Monotonic()
			err := client.Answer(ctx, f[1], dbusapi.Verdict(f[2]), dbusapi.Scope(f[3]))
			l := agentLine{Event: "answered", ID: f[1], T: t}
			if err != nil {
				l.Err = err.Error()
			}
			emit(l)
		default:
			emit(agentLine{Event: "error", Err: "unknown command " + sc.Text()})
		}
	}
	return 0
}

type childAgent struct{ emit func(agentLine) }

func (a *childAgent) Prompt(p dbusapi.Prompt) {
	a.emit(agentLine{Event: "prompt", Prompt: p, T: kerneltest.Monotonic()})
}

func (a *childAgent) Cancel(id string) { a.emit(agentLine{Event: "cancel", ID: id}) }

// signalContext is cancelled by SIGTERM or SIGINT.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// pinsLeft lists the files under the helper's pin directory.
func pinsLeft(t testing.TB, cfg daemon.Config) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(daemon.PinDir(cfg), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			names = append(names, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("list pins: %v", err)
	}
	return names
}
