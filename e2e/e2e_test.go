package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aegisfw/aegis/helper/ctl"
	"github.com/aegisfw/aegis/helper/daemon"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/kerneltest"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/aegisfw/aegis/internal/testenv"
)

// TestPromptAnswers runs the helper in process: an unknown app's held
// connection is put to the owner's agent, and the answer decides it.
func TestPromptAnswers(t *testing.T) {
	e := newEnv(t)
	e.cfg.PromptTimeout = 2 * time.Second
	e.startInProcess(t)
	a := e.startAgent(t)

	t.Run("allow completes the connection", func(t *testing.T) {
		c := e.connect(t, false, 15*time.Second)
		p := a.prompt(t, c.PID)
		if p.Prompt.UID != e.user.UID || p.Prompt.Exe != e.clientExe || p.Prompt.Port != e.tcp.Port() {
			t.Errorf("prompt = %+v, want uid %d, exe %s, port %d", p.Prompt, e.user.UID, e.clientExe, e.tcp.Port())
		}
		a.answer(t, p.Prompt.ID, dbusapi.Allow, dbusapi.Once)
		if r := c.Next(t); r.Err != "" {
			t.Errorf("connect after allow: %s, want success", r.Err)
		}
		c.Wait(t)
	})
	t.Run("deny aborts it", func(t *testing.T) {
		c := e.connect(t, false, 15*time.Second)
		p := a.prompt(t, c.PID)
		a.answer(t, p.Prompt.ID, dbusapi.Deny, dbusapi.Once)
		if r := c.Next(t); r.Err != "ECONNABORTED" {
			t.Errorf("connect after deny: %q, want ECONNABORTED", r.Err)
		}
		c.Wait(t)
	})
	t.Run("no answer denies at the timeout", func(t *testing.T) {
		c := e.connect(t, false, 15*time.Second)
		p := a.prompt(t, c.PID)
		r := c.Next(t)
		if r.Err != "ECONNABORTED" {
			t.Errorf("connect without an answer: %q, want ECONNABORTED", r.Err)
		}
		a.next(t, waitTimeout, func(l agentLine) bool { return l.Event == "cancel" && l.ID == p.Prompt.ID })
		c.Wait(t)
		client := e.client(t)
		testbus.WaitFor(t, waitTimeout, "a timed-out prompt to be counted", func() bool {
			cs, err := client.Counters(context.Background())
			return err == nil && cs.TimedOut > 0
		})
		// An answer after the timeout finds no prompt and changes nothing.
		a.child.Send(t, "answer "+p.Prompt.ID+" allow once")
		if l := a.next(t, waitTimeout, func(l agentLine) bool { return l.Event == "answered" }); !strings.Contains(l.Err, "NotFound") {
			t.Errorf("late answer: %q, want NotFound", l.Err)
		}
	})
}

// TestLearningRecordsLineage switches to learning mode with aegisctl: an
// unknown app passes and is recorded once with its lineage, and adopting
// it makes it a rule.
func TestLearningRecordsLineage(t *testing.T) {
	e := newEnv(t)
	e.startInProcess(t)
	ctx := context.Background()
	if out, code := e.ctl(t, "mode", "learning"); code != 0 {
		t.Fatalf("aegisctl mode learning: exit %d: %s", code, out)
	}
	// The clients stay alive until the helper has looked at them.
	for range 2 {
		c := e.cg.Start(t, kerneltest.Options{Exe: e.clientExe, Credential: &syscall.Credential{Uid: e.user.UID, Gid: e.user.GID}},
			"connectmany", e.tcp.String(), "1")
		if r := c.Next(t); r.Err != "" {
			t.Fatalf("connect in learning mode: %s, want success", r.Err)
		}
		t.Cleanup(func() { c.Wait(t) })
	}
	client := e.client(t)
	var learned []dbusapi.Learned
	testbus.WaitFor(t, waitTimeout, "the client to be learned", func() bool {
		var err error
		learned, err = client.Learned(ctx)
		return err == nil && len(learned) > 0
	})
	if len(learned) != 1 {
		t.Fatalf("learned %d apps, want 1 (recorded once): %+v", len(learned), learned)
	}
	l := learned[0]
	if l.Path != e.clientExe || l.UID != e.user.UID {
		t.Errorf("learned %s for uid %d, want %s for uid %d", l.Path, l.UID, e.clientExe, e.user.UID)
	}
	// The client's parent is this test binary.
	self, _ := os.Executable()
	if len(l.Lineage) < 2 || !strings.Contains(strings.Join(l.Lineage, " "), filepath.Base(self)) {
		t.Errorf("lineage = %q, want the client and its parent, this test binary", l.Lineage)
	}
	if !strings.Contains(strings.Join(l.Dests, " "), e.tcp.String()) && !strings.Contains(strings.Join(l.Dests, " "), e.tcp.Addr().String()) {
		t.Errorf("destinations = %q, want %s", l.Dests, e.tcp)
	}
	out, code := e.ctl(t, "--json", "learned")
	var ls []dbusapi.Learned
	if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls) != 1 {
		t.Errorf("aegisctl --json learned = %d, %s; want the learned app", code, out)
	}
	if out, code := e.ctl(t, "adopt", "--all"); code != 0 {
		t.Fatalf("aegisctl adopt --all: exit %d: %s", code, out)
	}
	apps, err := client.Apps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range apps {
		found = found || (a.Path == e.clientExe && a.Verdict == dbusapi.Allow)
	}
	if !found {
		t.Errorf("apps after adopt = %+v, want %s allowed", apps, e.clientExe)
	}
}

// ctl runs aegisctl as root against the env's bus and returns its
// standard output (and error) and exit code.
func (e *env) ctl(t testing.TB, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := ctl.Run(context.Background(), ctl.IO{Out: &out, Err: &errb, UID: 0}, append([]string{"--bus", e.bus.Addr}, args...))
	if code != 0 {
		return out.String() + errb.String(), code
	}
	return out.String(), code
}

// TestAegisctl runs aegisctl's commands against the running helper.
func TestAegisctl(t *testing.T) {
	e := newEnv(t)
	e.startInProcess(t)

	out, code := e.ctl(t, "status")
	if code != 0 || !strings.Contains(out, "mode") || !strings.Contains(out, "enforce") {
		t.Errorf("aegisctl status = %d, %q; want the enforce mode", code, out)
	}
	out, code = e.ctl(t, "--json", "status")
	var st struct {
		Status   dbusapi.Status
		Counters dbusapi.Counters
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Status.Mode != dbusapi.Enforce {
		t.Errorf("aegisctl --json status = %d, %q; want JSON with mode enforce", code, out)
	}

	if out, code := e.ctl(t, "allow", e.clientExe, "--user", "any"); code != 0 {
		t.Fatalf("aegisctl allow: exit %d: %s", code, out)
	}
	out, code = e.ctl(t, "apps")
	if code != 0 || !strings.Contains(out, e.clientExe) || !strings.Contains(out, "valid") || !strings.Contains(out, "HASH") {
		t.Errorf("aegisctl apps = %d, %q; want a table with %s valid", code, out, e.clientExe)
	}
	out, code = e.ctl(t, "apps", "--json")
	var apps []dbusapi.App
	if code != 0 || json.Unmarshal([]byte(out), &apps) != nil || len(apps) != 1 || apps[0].HashState != dbusapi.HashValid {
		t.Errorf("aegisctl apps --json = %d, %q; want one valid app", code, out)
	}
	// The allowed app connects without a prompt.
	c := e.connect(t, false, 5*time.Second)
	if r := c.Next(t); r.Err != "" {
		t.Errorf("connect of an allowed app: %s, want success", r.Err)
	}
	c.Wait(t)

	out, code = e.ctl(t, "--json", "flows")
	var flows []dbusapi.Flow
	if code != 0 || json.Unmarshal([]byte(out), &flows) != nil {
		t.Errorf("aegisctl --json flows = %d, %q; want a JSON list", code, out)
	}
	out, code = e.ctl(t, "rules", "export")
	if code != 0 || !strings.Contains(out, e.clientExe) {
		t.Errorf("aegisctl rules export = %d, %q; want the rule file naming %s", code, out, e.clientExe)
	}

	// rules edit: a broken edit is refused with its line, and declining to
	// edit again changes nothing.
	editor := filepath.Join(t.TempDir(), "editor.sh")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\necho 'bogus = 1' >> \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var eout, eerr bytes.Buffer
	code = ctl.Run(context.Background(), ctl.IO{In: strings.NewReader("n\n"), Out: &eout, Err: &eerr,
		Getenv: func(k string) string {
			if k == "EDITOR" {
				return editor
			}
			return ""
		}}, []string{"--bus", e.bus.Addr, "rules", "edit"})
	if code != ctl.ExitError || !strings.Contains(eerr.String(), "bogus") || !strings.Contains(eerr.String(), "rules not changed") {
		t.Errorf("aegisctl rules edit with a broken edit = %d, %q; want a refusal naming the bad key", code, eerr.String())
	}
	if after, _ := e.ctl(t, "rules", "export"); after != out {
		t.Errorf("rules changed by a refused edit:\n%s\nwant\n%s", after, out)
	}

	// rules edit: an error offers to edit again; the fixed file is imported.
	fixer := filepath.Join(t.TempDir(), "fixer.sh")
	script := "#!/bin/sh\nif grep -q bogus \"$1\"; then\n  sed -i '/bogus/d' \"$1\"\n" +
		"  printf '[[app]]\\npath = \"/usr/bin/false\"\\nverdict = \"deny\"\\n' >> \"$1\"\nelse\n  echo 'bogus = 1' >> \"$1\"\nfi\n"
	if err := os.WriteFile(fixer, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	eout.Reset()
	eerr.Reset()
	code = ctl.Run(context.Background(), ctl.IO{In: strings.NewReader("y\n"), Out: &eout, Err: &eerr,
		Getenv: func(k string) string {
			if k == "VISUAL" {
				return fixer
			}
			return ""
		}}, []string{"--bus", e.bus.Addr, "rules", "edit"})
	if code != 0 || !strings.Contains(eerr.String(), "edit again?") || !strings.Contains(eout.String(), "rules imported") {
		t.Errorf("aegisctl rules edit, fixed on the second try = %d, %q, %q; want imported", code, eout.String(), eerr.String())
	}
	out, code = e.ctl(t, "rules", "show")
	if code != 0 || !strings.Contains(out, "/usr/bin/false") || !strings.Contains(out, e.clientExe) {
		t.Errorf("aegisctl rules show after edit = %d, %q; want both apps", code, out)
	}

	// rules import: a bad file is refused with its line; nothing changes.
	exported, _ := e.ctl(t, "rules", "export")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("version = 1\n[[app]]\npath = \"relative\"\nverdict = \"allow\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := e.ctl(t, "rules", "import", bad); code != ctl.ExitError || !strings.Contains(out, "bad.toml:") {
		t.Errorf("aegisctl rules import of a bad file = %d, %q; want a refusal naming the line", code, out)
	}
	if after, _ := e.ctl(t, "rules", "export"); after != exported {
		t.Errorf("rules changed by a refused import")
	}
	good := filepath.Join(t.TempDir(), "good.toml")
	if err := os.WriteFile(good, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := e.ctl(t, "rules", "import", good); code != 0 {
		t.Errorf("aegisctl rules import of the exported file = %d, %q", code, out)
	}
	if out, code := e.ctl(t, "forget", "/usr/bin/false", "--user", "any"); code != 0 {
		t.Errorf("aegisctl forget /usr/bin/false: exit %d: %s", code, out)
	}
	if out, code := e.ctl(t, "rehash", e.clientExe); code != 0 || !strings.Contains(out, "outside the package manager") {
		t.Errorf("aegisctl rehash = %d, %q; want the origin", code, out)
	}

	if out, code := e.ctl(t, "mode", "learning"); code != 0 || !strings.Contains(out, "learning") {
		t.Errorf("aegisctl mode learning = %d, %q", code, out)
	}
	out, code = e.ctl(t, "--json", "status")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Status.Mode != dbusapi.Learning {
		t.Errorf("status after mode learning = %d, %q; want learning", code, out)
	}
	if out, code := e.ctl(t, "forget", e.clientExe, "--user", "any"); code != 0 {
		t.Errorf("aegisctl forget: exit %d: %s", code, out)
	}
	out, code = e.ctl(t, "--json", "apps")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("aegisctl --json apps after forget = %d, %q; want []", code, out)
	}
	// Bad input reaches the helper's validation and loses nothing.
	if out, code := e.ctl(t, "answer", "no-such-prompt", "allow"); code != ctl.ExitError || !strings.Contains(out, "NotFound") {
		t.Errorf("aegisctl answer for an unknown prompt = %d, %q; want NotFound", code, out)
	}
}

// ctlStream runs a streaming aegisctl command (agent, watch) as root with
// --json until t ends or cancel is called, and returns its output.
func (e *env) ctlStream(t *testing.T, cmd string) (out io.Reader, errb *testenv.Buffer, cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	errb = new(testenv.Buffer)
	go func() {
		done <- ctl.Run(ctx, ctl.IO{Out: w, Err: errb, UID: 0}, []string{"--bus", e.bus.Addr, "--json", cmd})
		w.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("aegisctl %s: exit %d: %s", cmd, code, errb.String())
		}
		r.Close()
	})
	return r, errb, cancel
}

// TestAegisctlAgent answers a prompt with "aegisctl agent" and
// "aegisctl answer": a root-owned process is asked of root's agent.
func TestAegisctlAgent(t *testing.T) {
	e := newEnv(t)
	e.startInProcess(t)
	r, errb, _ := e.ctlStream(t, "agent")
	lines := make(chan ctl.AgentLine, 16)
	go func() {
		dec := json.NewDecoder(r)
		for {
			var l ctl.AgentLine
			if dec.Decode(&l) != nil {
				close(lines)
				return
			}
			lines <- l
		}
	}()
	next := func(event string) ctl.AgentLine {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("aegisctl agent ended: %s", errb.String())
				}
				if l.Event == event {
					return l
				}
			case <-time.After(waitTimeout):
				t.Fatalf("aegisctl agent printed no %s", event)
			}
		}
	}
	next("registered")
	c := e.connect(t, true, 15*time.Second)
	p := next("prompt")
	if p.Prompt == nil || int(p.Prompt.PID) != c.PID || p.Prompt.UID != 0 {
		t.Fatalf("aegisctl agent prompt = %+v, want one about pid %d of root", p.Prompt, c.PID)
	}
	if out, code := e.ctl(t, "--json", "prompts"); code != 0 || !strings.Contains(out, p.Prompt.ID) {
		t.Errorf("aegisctl prompts = %d, %q; want %s listed", code, out, p.Prompt.ID)
	}
	if out, code := e.ctl(t, "answer", p.Prompt.ID, "allow", "--scope", "once"); code != 0 {
		t.Fatalf("aegisctl answer: exit %d: %s", code, out)
	}
	if res := c.Next(t); res.Err != "" {
		t.Errorf("connect after aegisctl answer allow: %s, want success", res.Err)
	}
	c.Wait(t)
	next("cancel")
}

// TestKillDuringHeldConnection kills the helper with SIGKILL while a
// connection is held: the restarted helper adopts the pins, finds the
// request in the pinned pending map, prompts again, and the answer
// completes the connection.
func TestKillDuringHeldConnection(t *testing.T) {
	e := newEnv(t)
	h := e.startSubprocess(t, "")
	a := e.startAgent(t)
	c := e.connect(t, false, 30*time.Second)
	first := a.prompt(t, c.PID)
	if err := h.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("helper exited cleanly after SIGKILL")
	}
	if len(pinsLeft(t, e.cfg)) == 0 {
		t.Fatal("no pins left after SIGKILL")
	}
	e.startSubprocess(t, "")
	a.register(t)
	second := a.prompt(t, c.PID)
	if second.Prompt.Port != first.Prompt.Port || second.Prompt.Exe != first.Prompt.Exe {
		t.Errorf("prompt after restart = %+v, want the held connection %+v", second.Prompt, first.Prompt)
	}
	a.answer(t, second.Prompt.ID, dbusapi.Allow, dbusapi.Once)
	r := c.Next(t)
	if r.Err != "" {
		t.Errorf("held connect after the restart and allow: %s, want success", r.Err)
	}
	c.Wait(t)
}

// TestStopAndUninstall checks that SIGTERM stops the helper cleanly with
// enforcement left pinned (a denied app stays denied), that systemd hears
// READY=1 and STOPPING=1, and that Uninstall removes every pin and lets
// traffic through again.
func TestStopAndUninstall(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := e.startSubprocess(t, sock)
	if got := readNotify(t, ln); !strings.Contains(got, "READY=1") {
		t.Errorf("first notification = %q, want READY=1", got)
	}
	if out, code := e.ctl(t, "deny", e.clientExe, "--user", "any"); code != 0 {
		t.Fatalf("aegisctl deny: exit %d: %s", code, out)
	}
	if err := h.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("helper after SIGTERM: %v, want a clean exit", err)
	}
	if got := readNotify(t, ln); !strings.Contains(got, "STOPPING=1") {
		t.Errorf("notification at stop = %q, want STOPPING=1", got)
	}
	if len(pinsLeft(t, e.cfg)) == 0 {
		t.Fatal("no pins left after SIGTERM")
	}
	c := e.connect(t, false, 5*time.Second)
	if r := c.Next(t); r.Err != "EPERM" {
		t.Errorf("denied app with the helper stopped: %q, want EPERM (enforcement pinned)", r.Err)
	}
	c.Wait(t)

	cfg := e.cfg
	cfg.Logger = testLogger(t)
	if err := daemon.Uninstall(cfg); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if left := pinsLeft(t, e.cfg); len(left) != 0 {
		t.Errorf("pins left after uninstall: %q", left)
	}
	c = e.connect(t, false, 5*time.Second)
	if r := c.Next(t); r.Err != "" {
		t.Errorf("connect after uninstall: %q, want success", r.Err)
	}
	c.Wait(t)
	// A second uninstall finds nothing to do.
	if err := daemon.Uninstall(cfg); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

func readNotify(t testing.TB, ln *net.UnixConn) string {
	t.Helper()
	ln.SetReadDeadline(time.Now().Add(waitTimeout))
	buf := make([]byte, 4096)
	n, err := ln.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

// TestSystemdUnits checks the unit files with systemd-analyze verify and
// that they name the helper's bus name and install paths.
func TestSystemdUnits(t *testing.T) {
	unit := testbus.ModuleFile(t, "systemd/aegis-helper.service")
	activation := testbus.ModuleFile(t, "systemd/io.github.aegisfw.Aegis1.service")
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{"Type=dbus", "BusName=" + dbusapi.BusName, "ExecStart=/usr/libexec/aegis/aegis-helper",
		"ProtectSystem=strict", "ReadWritePaths=/etc/aegis /var/lib/aegis /sys/fs/bpf", "NoNewPrivileges=yes"} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("%s lacks %q", unit, want)
		}
	}
	ab, err := os.ReadFile(activation)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[D-BUS Service]", "Name=" + dbusapi.BusName, "User=root", "SystemdService=aegis-helper.service"} {
		if !strings.Contains(string(ab), want+"\n") {
			t.Errorf("%s lacks %q", activation, want)
		}
	}

	sa := testenv.RequireTool(t, "systemd-analyze")
	// verify checks that ExecStart exists; point it at an installed
	// program, since the helper is not installed here.
	dir := t.TempDir()
	test := filepath.Join(dir, "aegis-helper.service")
	if err := os.WriteFile(test, []byte(strings.Replace(text, "ExecStart=/usr/libexec/aegis/aegis-helper", "ExecStart=/bin/true", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", test).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestTamperedAtStart starts the helper on a rule file changed while no
// helper ran: it keeps the last good rules, keeps the refused content
// aside, and signals Tampered once it serves.
func TestTamperedAtStart(t *testing.T) {
	e := newEnv(t)
	h := e.startSubprocess(t, "")
	if out, code := e.ctl(t, "allow", e.clientExe, "--user", "any"); code != 0 {
		t.Fatalf("aegisctl allow: exit %d: %s", code, out)
	}
	if err := h.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("stop helper: %v", err)
	}
	good, err := os.ReadFile(e.cfg.RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.cfg.RulesFile, []byte("version = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := e.client(t).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.startSubprocess(t, "")
	var ev dbusapi.Event
	for ev.Kind != "Tampered" {
		select {
		case ev = <-events:
		case <-time.After(waitTimeout):
			t.Fatal("no Tampered signal after starting on a tampered rule file")
		}
	}
	if ev.Path != e.cfg.RulesFile || ev.Rejected == "" {
		t.Errorf("Tampered(%q, %q), want the rule file and its rejected copy", ev.Path, ev.Rejected)
	}
	if b, err := os.ReadFile(ev.Rejected); err != nil || string(b) != "version = 1\n" {
		t.Errorf("rejected copy = %q, %v; want the refused content", b, err)
	}
	if b, _ := os.ReadFile(e.cfg.RulesFile); string(b) != string(good) {
		t.Errorf("rule file after start:\n%s\nwant the last good one:\n%s", b, good)
	}
	out, code := e.ctl(t, "--json", "status")
	var st struct{ Status dbusapi.Status }
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.Status.Tampered || st.Status.Apps != 1 {
		t.Errorf("status = %d, %q; want tampered with the last good app", code, out)
	}
	// The last good rule is enforced: the allowed app connects at once.
	c := e.connect(t, false, 5*time.Second)
	if r := c.Next(t); r.Err != "" {
		t.Errorf("allowed app after tampering: %q, want success", r.Err)
	}
	c.Wait(t)
}

// TestAegisctlWatch streams signals with "aegisctl watch".
func TestAegisctlWatch(t *testing.T) {
	e := newEnv(t)
	e.startInProcess(t)
	r, _, cancel := e.ctlStream(t, "watch")
	// A missing signal ends the watch, and with it the decoding below.
	stop := time.AfterFunc(waitTimeout, cancel)
	defer stop.Stop()
	dec := json.NewDecoder(r)
	var ev dbusapi.Event
	if err := dec.Decode(&ev); err != nil || ev.Kind != "watching" {
		t.Fatalf("first watch line = %+v, %v; want watching", ev, err)
	}
	if out, code := e.ctl(t, "mode", "learning"); code != 0 {
		t.Fatalf("aegisctl mode learning: exit %d: %s", code, out)
	}
	for ev.Kind != "ModeChanged" {
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("watch: %v", err)
		}
	}
	if ev.Mode != dbusapi.Learning {
		t.Errorf("ModeChanged(%q), want learning", ev.Mode)
	}
}
