package tray

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	_ "image/png"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gen2brain/beeep"
	"github.com/godbus/dbus/v5"

	"github.com/aegisfw/aegis/helper/daemon"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/icons"
	"github.com/aegisfw/aegis/internal/kerneltest"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/aegisfw/aegis/internal/testenv"
)

// trayChildEnv makes the test binary run the tray (see runTrayChild).
const trayChildEnv = "AEGIS_TRAY_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(trayChildEnv) != "" {
		os.Exit(runTrayChild())
	}
	kerneltest.Main(m)
}

// runTrayChild runs the tray as aegis-tray does, on the buses of its
// environment, until SIGTERM.
func runTrayChild() int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	beeep.AppName = "Aegis"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, Config{Logger: logger, CallTimeout: 5 * time.Second}); err != nil {
		logger.Error("tray failed", "err", err)
		return 1
	}
	return 0
}

// wait bounds waits for things that happen within a second or two.
const wait = 10 * time.Second

// desktop is a private X display with dunst and xfce4-panel on a private
// session bus.
type desktop struct {
	env     []string // DISPLAY, DBUS_SESSION_BUS_ADDRESS, HOME, XDG_*
	addr    string
	dir     string
	pick    string // dunst's context menu picks the action label written here
	conn    *dbus.Conn
	display string
}

// startProcess starts a command in its own process group, which is killed
// at cleanup: bus-activated helpers and plugin wrappers go with it.
func startProcess(t *testing.T, env []string, out *testenv.Buffer, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if out != nil && (t.Failed() || testing.Verbose()) {
			t.Logf("%s output:\n%s", filepath.Base(name), out.String())
		}
	})
	return cmd
}

// firstLine starts a command that reports readiness by printing a line on
// the file descriptor fd (1 for stdout, 3 for an extra pipe).
func firstLine(t *testing.T, env []string, fd int, name string, args ...string) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if fd == 1 {
		cmd.Stdout = w
	} else {
		cmd.ExtraFiles = []*os.File{w}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	w.Close()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		r.Close()
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		if sc.Scan() {
			line <- strings.TrimSpace(sc.Text())
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		if !ok {
			t.Fatalf("%s exited without reporting", name)
		}
		return l
	case <-time.After(wait):
		t.Fatalf("%s did not report within %v", name, wait)
	}
	return ""
}

const panelConfig = `<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="32"/>
      <property name="icon-size" type="uint" value="24"/>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray">
      <property name="square-icons" type="bool" value="true"/>
    </property>
  </property>
</channel>
`

func startDesktop(t *testing.T) *desktop {
	t.Helper()
	testenv.RequireTool(t, "Xvfb", "dbus-daemon", "dunst", "dunstctl", "xfce4-panel", "import")
	dir := t.TempDir()
	d := &desktop{dir: dir, pick: filepath.Join(dir, "pick")}
	d.display = ":" + firstLine(t, nil, 3, "Xvfb", "-displayfd", "3", "-screen", "0", "1024x600x24", "-nolisten", "tcp")
	home := filepath.Join(dir, "home")
	cfg := filepath.Join(home, ".config", "xfce4", "xfconf", "xfce-perchannel-xml")
	for _, p := range []string{cfg, filepath.Join(home, "run")} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg, "xfce4-panel.xml"), []byte(panelConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home + "/.config", "XDG_CACHE_HOME=" + home + "/.cache",
		"XDG_RUNTIME_DIR=" + home + "/run", "XDG_DATA_HOME=" + home + "/.local/share", "NO_AT_BRIDGE=1", "DISPLAY=" + d.display}
	// The stock session configuration, so that xfconfd (used by the panel)
	// is bus-activated; activated services inherit the daemon's environment.
	d.addr = firstLine(t, base, 1, "dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog",
		"--address=unix:path="+filepath.Join(dir, "session_bus_socket"), "--print-address=1")
	d.env = append(base, "DBUS_SESSION_BUS_ADDRESS="+d.addr)
	conn, err := dbus.Connect(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.conn = conn

	// dunst's context menu runs "dmenu": this one picks the action whose
	// label is in d.pick.
	picker := filepath.Join(dir, "pick.sh")
	script := "#!/bin/sh\ngrep -m1 \"^#$(cat " + d.pick + ")\"\n"
	if err := os.WriteFile(picker, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rc := filepath.Join(dir, "dunstrc")
	if err := os.WriteFile(rc, []byte("[global]\n    monitor = 0\n    follow = none\n    width = 400\n    origin = top-right\n    offset = 10x40\n    dmenu = "+picker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, d.env, &testenv.Buffer{}, "dunst", "-config", rc)
	d.waitName(t, "org.freedesktop.Notifications")
	return d
}

func (d *desktop) hasName(name string) bool {
	var has bool
	err := d.conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has)
	return err == nil && has
}

func (d *desktop) waitName(t *testing.T, name string) {
	t.Helper()
	testbus.WaitFor(t, wait, name+" on the session bus", func() bool { return d.hasName(name) })
}

// run runs a desktop command and returns its output.
func (d *desktop) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// notifications records every Notify call on the session bus.
type notifications struct {
	mu   sync.Mutex
	seen []notifyCall
	more chan struct{}
}

type notifyCall struct {
	Summary, Body string
	Actions       []string
	ReplacesID    uint32
}

func (d *desktop) monitor(t *testing.T) *notifications {
	t.Helper()
	conn, err := dbus.Connect(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rule := "type='method_call',interface='org.freedesktop.Notifications',member='Notify'"
	if err := conn.BusObject().Call("org.freedesktop.DBus.Monitoring.BecomeMonitor", 0, []string{rule}, uint32(0)).Err; err != nil {
		t.Fatalf("become monitor: %v", err)
	}
	msgs := make(chan *dbus.Message, 64)
	conn.Eavesdrop(msgs)
	n := &notifications{more: make(chan struct{}, 1)}
	go func() {
		for m := range msgs {
			var c notifyCall
			var app, icon string
			var hints map[string]dbus.Variant
			var timeout int32
			if m.Type != dbus.TypeMethodCall || dbus.Store(m.Body, &app, &c.ReplacesID, &icon, &c.Summary, &c.Body, &c.Actions, &hints, &timeout) != nil {
				continue
			}
			n.mu.Lock()
			n.seen = append(n.seen, c)
			n.mu.Unlock()
			select {
			case n.more <- struct{}{}:
			default:
			}
		}
	}()
	return n
}

// await returns the first notification from index from on that match accepts.
func (n *notifications) await(t *testing.T, what string, match func(notifyCall) bool) notifyCall {
	t.Helper()
	deadline := time.After(wait)
	for {
		n.mu.Lock()
		for _, c := range n.seen {
			if match(c) {
				n.mu.Unlock()
				return c
			}
		}
		n.mu.Unlock()
		select {
		case <-n.more:
		case <-deadline:
			n.mu.Lock()
			defer n.mu.Unlock()
			t.Fatalf("no notification %s within %v; seen: %+v", what, wait, n.seen)
		}
	}
}

// helperEnv is aegis-helper on a private system bus, guarding a child
// cgroup.
type helperEnv struct {
	bus       *testbus.Bus
	cg        *kerneltest.Cgroup
	cfg       daemon.Config
	clientExe string
	// tcp and tcp2 accept and close connections on loopback.
	tcp, tcp2 netip.AddrPort
	stop      func()
}

func startHelperEnv(t *testing.T) *helperEnv {
	t.Helper()
	kerneltest.Require(t)
	h := &helperEnv{
		bus:       testbus.Start(t, testbus.Options{PolicyFiles: []string{testbus.ModuleFile(t, "systemd/io.github.aegisfw.Aegis1.conf")}}),
		cg:        kerneltest.NewCgroup(t),
		clientExe: kerneltest.SharedCopy(t),
	}
	h.tcp, h.tcp2 = kerneltest.ListenTCP(t, "127.0.0.1:0"), kerneltest.ListenTCP(t, "127.0.0.1:0")
	dir := t.TempDir()
	etc, state := filepath.Join(dir, "etc-aegis"), filepath.Join(dir, "var-lib-aegis")
	for _, p := range []string{etc, state} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	h.cfg = daemon.Config{
		Cgroup:        h.cg.Path,
		PinRoot:       kerneltest.MountBPFFS(t),
		RulesFile:     filepath.Join(etc, "rules.toml"),
		DropInDir:     filepath.Join(etc, "rules.d"),
		StateDir:      state,
		BusAddress:    h.bus.Addr,
		TrustedAgents: []string{},
		PromptTimeout: 20 * time.Second,
		Logger:        slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	h.start(t)
	t.Cleanup(func() { h.stop() })
	return h
}

// start runs the helper in this process until stop.
func (h *helperEnv) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, h.cfg) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("helper: %v", err)
			}
		})
	}
	conn := h.bus.Conn(t)
	testbus.WaitFor(t, wait, "the helper to own its name", func() bool {
		var has bool
		err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, dbusapi.BusName).Store(&has)
		return err == nil && has
	})
}

// connect starts a blocking TCP connect to h.tcp, as root, from a client
// in the cgroup.
func (h *helperEnv) connect(t *testing.T) *kerneltest.Client { return h.connectTo(t, h.tcp) }

func (h *helperEnv) connectTo(t *testing.T, dst netip.AddrPort) *kerneltest.Client {
	t.Helper()
	return h.cg.Start(t, kerneltest.Options{Exe: h.clientExe}, "connect", dst.String(), "15000")
}

// trayItem is the tray's StatusNotifierItem as a host sees it.
type trayItem struct {
	sni, menu dbus.BusObject
}

// menuNode is one dbusmenu item from GetLayout.
type menuNode struct {
	ID       int32
	Label    string
	Visible  bool
	Enabled  bool
	Toggle   int64 // toggle-state; -1 without a check box
	Children []menuNode
}

func (it *trayItem) layout(t *testing.T) menuNode {
	t.Helper()
	var rev uint32
	var layout []any
	if err := it.menu.Call("com.canonical.dbusmenu.GetLayout", 0, int32(0), int32(-1), []string{}).Store(&rev, &layout); err != nil {
		t.Fatalf("GetLayout: %v", err)
	}
	return parseNode(layout)
}

func parseNode(v []any) menuNode {
	n := menuNode{ID: v[0].(int32), Visible: true, Enabled: true, Toggle: -1}
	props := v[1].(map[string]dbus.Variant)
	if l, ok := props["label"]; ok {
		n.Label, _ = l.Value().(string)
	}
	if b, ok := props["visible"].Value().(bool); ok {
		n.Visible = b
	}
	if b, ok := props["enabled"].Value().(bool); ok {
		n.Enabled = b
	}
	if tt, _ := props["toggle-type"].Value().(string); tt == "checkmark" {
		switch s := props["toggle-state"].Value().(type) {
		case int32:
			n.Toggle = int64(s)
		case int64:
			n.Toggle = s
		case int:
			n.Toggle = int64(s)
		}
	}
	for _, c := range v[2].([]dbus.Variant) {
		if cv, ok := c.Value().([]any); ok {
			n.Children = append(n.Children, parseNode(cv))
		}
	}
	return n
}

// find returns the visible item whose label starts with prefix.
func (n menuNode) find(prefix string) (menuNode, bool) {
	for _, c := range n.Children {
		if !c.Visible {
			continue
		}
		if strings.HasPrefix(c.Label, prefix) {
			return c, true
		}
		if f, ok := c.find(prefix); ok {
			return f, true
		}
	}
	return menuNode{}, false
}

// waitItem waits until the menu has an item starting with prefix that ok accepts.
func (it *trayItem) waitItem(t *testing.T, prefix string, ok func(menuNode) bool) menuNode {
	t.Helper()
	var got menuNode
	testbus.WaitFor(t, wait, fmt.Sprintf("menu item %q", prefix), func() bool {
		n, found := it.layout(t).find(prefix)
		got = n
		return found && (ok == nil || ok(n))
	})
	return got
}

func (it *trayItem) click(t *testing.T, id int32) { it.event(t, id, "clicked") }

// event sends a dbusmenu event as a host does when the user acts.
func (it *trayItem) event(t *testing.T, id int32, name string) {
	t.Helper()
	err := it.menu.Call("com.canonical.dbusmenu.Event", 0, id, name, dbus.MakeVariant(int32(0)), uint32(time.Now().Unix())).Err
	if err != nil {
		t.Fatalf("%s item %d: %v", name, id, err)
	}
}

// iconColour returns the colour of the icon's shield, left of the glyph.
func (it *trayItem) iconColour(t *testing.T) (color.RGBA, bool) {
	t.Helper()
	v, err := it.sni.GetProperty("org.kde.StatusNotifierItem.IconPixmap")
	if err != nil {
		return color.RGBA{}, false
	}
	var px []struct {
		W, H int32
		Pix  []byte
	}
	if err := v.Store(&px); err != nil || len(px) == 0 || px[0].W != iconSize || len(px[0].Pix) != iconSize*iconSize*4 {
		return color.RGBA{}, false
	}
	i := (20*iconSize + 12) * 4 // ARGB
	p := px[0].Pix
	return color.RGBA{p[i+1], p[i+2], p[i+3], p[i]}, true
}

func (it *trayItem) waitIcon(t *testing.T, s icons.State) {
	t.Helper()
	testbus.WaitFor(t, wait, "the "+s.String()+" icon", func() bool {
		c, ok := it.iconColour(t)
		return ok && c == s.Colour()
	})
}

// startTray runs the tray in a child process on both buses.
func startTray(t *testing.T, d *desktop, h *helperEnv) (*trayItem, *exec.Cmd) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env := append([]string{trayChildEnv + "=1", "DBUS_SYSTEM_BUS_ADDRESS=" + h.bus.Addr}, d.env...)
	cmd := startProcess(t, env, &testenv.Buffer{}, self)
	name := fmt.Sprintf("org.kde.StatusNotifierItem-%d-1", cmd.Process.Pid)
	d.waitName(t, name)
	it := &trayItem{sni: d.conn.Object(name, "/StatusNotifierItem")}
	// fyne.io/systray takes its name before it exports the properties.
	var menu dbus.ObjectPath
	testbus.WaitFor(t, wait, "the item's Menu property", func() bool {
		v, err := it.sni.GetProperty("org.kde.StatusNotifierItem.Menu")
		if err == nil {
			menu, _ = v.Value().(dbus.ObjectPath)
		}
		return menu != ""
	})
	it.menu = d.conn.Object(name, menu)
	return it, cmd
}

// TestTrayDesktop runs the tray against a real helper on a private system
// bus and a private desktop (Xvfb, dunst, xfce4-panel).
func TestTrayDesktop(t *testing.T) {
	h := startHelperEnv(t)
	d := startDesktop(t)
	panelOut := &testenv.Buffer{}
	startProcess(t, d.env, panelOut, "xfce4-panel", "--disable-wm-check")
	notes := d.monitor(t)
	it, _ := startTray(t, d, h)
	client := dbusapi.NewClient(h.bus.Conn(t), false)
	ctx := context.Background()

	t.Run("menu and learning checkbox", func(t *testing.T) {
		it.waitItem(t, "Aegis: enforcing", func(n menuNode) bool { return !n.Enabled })
		box := it.waitItem(t, "Learning mode", func(n menuNode) bool { return n.Toggle == 0 && n.Enabled })
		it.waitIcon(t, icons.Enforcing)
		it.click(t, box.ID)
		testbus.WaitFor(t, wait, "learning mode", func() bool {
			m, err := client.Mode(ctx)
			return err == nil && m == dbusapi.Learning
		})
		it.waitItem(t, "Learning mode", func(n menuNode) bool { return n.Toggle == 1 })
		it.waitItem(t, "Aegis: learning", nil)
		it.waitIcon(t, icons.Learning)
		it.click(t, box.ID)
		testbus.WaitFor(t, wait, "enforce mode", func() bool {
			m, err := client.Mode(ctx)
			return err == nil && m == dbusapi.Enforce
		})
		it.waitIcon(t, icons.Enforcing)
	})

	t.Run("panel shows the icon", func(t *testing.T) {
		if !waitTimeout(wait, func() bool { return d.hasName("org.kde.StatusNotifierWatcher") }) {
			t.Fatalf("xfce4-panel did not provide a StatusNotifierWatcher; output:\n%s", panelOut.String())
		}
		watcher := d.conn.Object("org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher")
		testbus.WaitFor(t, wait, "the tray to register with the panel", func() bool {
			v, err := watcher.GetProperty("org.kde.StatusNotifierWatcher.RegisteredStatusNotifierItems")
			items, _ := v.Value().([]string)
			return err == nil && len(items) > 0
		})
		shot := filepath.Join(t.TempDir(), "panel.png")
		testbus.WaitFor(t, wait, "the icon in a screenshot of the panel", func() bool {
			d.run(t, "import", "-window", "root", shot)
			return findColour(t, shot, image.Rect(0, 0, 1024, 32), icons.Enforcing.Colour())
		})
		if fi, err := os.Stat(shot); err != nil || fi.Size() == 0 {
			t.Fatalf("screenshot %s: %v, empty", shot, err)
		}
		if dst := os.Getenv("AEGIS_TRAY_SCREENSHOT"); dst != "" {
			b, _ := os.ReadFile(shot)
			os.WriteFile(dst, b, 0o644)
		}
	})

	// answer raises a prompt and clicks label in its dunst notification.
	answer := func(t *testing.T, label string) kerneltest.Result {
		t.Helper()
		d.run(t, "dunstctl", "close-all")
		testbus.WaitFor(t, wait, "no notification displayed", func() bool {
			return d.run(t, "dunstctl", "count", "displayed") == "0"
		})
		c := h.connect(t)
		want := filepath.Base(h.clientExe) + " wants to connect to " + h.tcp.String()
		n := notes.await(t, "about the connection", func(n notifyCall) bool { return strings.HasPrefix(n.Body, want) })
		if got, wantActions := strings.Join(n.Actions, ","), "allow-once,Allow once,always-allow,Always allow,deny,Deny"; got != wantActions {
			t.Errorf("actions = %s, want %s", got, wantActions)
		}
		testbus.WaitFor(t, wait, "dunst to display it", func() bool {
			return d.run(t, "dunstctl", "count", "displayed") == "1"
		})
		it.waitItem(t, "Pending (1)", nil)
		if err := os.WriteFile(d.pick, []byte(label), 0o644); err != nil {
			t.Fatal(err)
		}
		d.run(t, "dunstctl", "context")
		r := c.Next(t)
		c.Wait(t)
		return r
	}
	t.Run("notification Allow once", func(t *testing.T) {
		if r := answer(t, "Allow once"); r.Err != "" {
			t.Errorf("connect after Allow once: %s, want success", r.Err)
		}
		it.waitItem(t, "Pending (0)", nil)
	})
	t.Run("notification Deny", func(t *testing.T) {
		if r := answer(t, "Deny"); r.Err != "ECONNABORTED" {
			t.Errorf("connect after Deny: %q, want ECONNABORTED", r.Err)
		}
	})

	t.Run("prompts of one app coalesce", func(t *testing.T) {
		d.run(t, "dunstctl", "close-all")
		it.waitItem(t, "Pending (0)", nil)
		first := h.connect(t)
		notes.await(t, "about the first connection", func(n notifyCall) bool {
			return n.ReplacesID == 0 && n.Summary == "Aegis: "+filepath.Base(h.clientExe)
		})
		// The helper coalesces connections to one destination into one
		// prompt; another destination is another prompt of the same app.
		second := h.connectTo(t, h.tcp2)
		notes.await(t, "replacing it for both", func(n notifyCall) bool {
			return n.ReplacesID != 0 && n.Summary == "Aegis: "+filepath.Base(h.clientExe)+" (2 connections)"
		})
		it.waitItem(t, "Pending (2)", nil)
		if n := d.run(t, "dunstctl", "count", "displayed"); n != "1" {
			t.Errorf("dunst displays %s notifications, want 1", n)
		}
		if err := os.WriteFile(d.pick, []byte("Allow once"), 0o644); err != nil {
			t.Fatal(err)
		}
		d.run(t, "dunstctl", "context")
		for _, c := range []*kerneltest.Client{first, second} {
			if r := c.Next(t); r.Err != "" {
				t.Errorf("connect after Allow once for both: %s, want success", r.Err)
			}
			c.Wait(t)
		}
	})

	t.Run("menu Allow once", func(t *testing.T) {
		d.run(t, "dunstctl", "close-all")
		it.waitItem(t, "Pending (0)", nil)
		c := h.connect(t)
		testbus.WaitFor(t, wait, "the prompt's notification", func() bool {
			return d.run(t, "dunstctl", "count", "displayed") == "1"
		})
		pending := it.waitItem(t, "Pending (1)", nil)
		var once menuNode
		testbus.WaitFor(t, wait, "the prompt's Allow once item", func() bool {
			var ok bool
			pending, _ = it.layout(t).find("Pending (1)")
			once, ok = pending.find("Allow once")
			return ok && once.Enabled
		})
		it.click(t, once.ID)
		if r := c.Next(t); r.Err != "" {
			t.Errorf("connect after the menu's Allow once: %s, want success", r.Err)
		}
		c.Wait(t)
		it.waitItem(t, "Pending (0)", nil)
		// The helper withdrew the answered prompt: its notification closed.
		testbus.WaitFor(t, wait, "the notification to close", func() bool {
			return d.run(t, "dunstctl", "count", "displayed") == "0"
		})
	})

	t.Run("tampering alerts", func(t *testing.T) {
		if err := os.WriteFile(h.cfg.RulesFile, []byte("# edited behind the helper's back\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		notes.await(t, "about tampering", func(n notifyCall) bool { return n.Summary == "Aegis: rules tampered with" })
		it.waitItem(t, "Aegis: enforcing (rules tampered with", nil)
		it.waitIcon(t, icons.Alert)
	})

	t.Run("helper stop and return", func(t *testing.T) {
		h.stop()
		notes.await(t, "about the helper stopping", func(n notifyCall) bool { return n.Summary == "Aegis helper stopped" })
		it.waitItem(t, "Aegis: helper not running", nil)
		it.waitItem(t, "Learning mode", func(n menuNode) bool { return !n.Enabled })
		it.waitIcon(t, icons.Disconnected)
		h.start(t)
		it.waitItem(t, "Aegis: enforcing", nil)
		it.waitIcon(t, icons.Enforcing)
		// The prompt agent registered again.
		if r := answer(t, "Deny"); r.Err != "ECONNABORTED" {
			t.Errorf("connect after Deny: %q, want ECONNABORTED", r.Err)
		}
	})

	t.Run("changed hash alerts and rehash", func(t *testing.T) {
		exe := filepath.Join(t.TempDir(), "fetcher")
		if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := client.Allow(ctx, exe, dbusapi.AnyUser); err != nil {
			t.Fatalf("allow %s: %v", exe, err)
		}
		it.waitItem(t, "fetcher (allow)", nil)
		f, err := os.OpenFile(exe, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("exit 0\n")
		f.Close()
		notes.await(t, "about the changed binary", func(n notifyCall) bool { return n.Summary == "Aegis: fetcher changed" })
		it.waitItem(t, "fetcher (allow, changed)", nil)
		it.waitIcon(t, icons.Alert)
		var rehash menuNode
		testbus.WaitFor(t, wait, "the app's Rehash item", func() bool {
			app, ok := it.layout(t).find("fetcher (allow, changed)")
			if ok {
				rehash, ok = app.find("Rehash")
			}
			return ok && rehash.Enabled
		})
		it.click(t, rehash.ID)
		notes.await(t, "about the rehash", func(n notifyCall) bool {
			return n.Summary == "Aegis: rehashed fetcher" && strings.HasSuffix(n.Body, "modified outside the package manager")
		})
		app := it.waitItem(t, "fetcher (allow)", nil)
		it.waitIcon(t, icons.Enforcing)
		forget, ok := app.find("Forget")
		if !ok {
			t.Fatalf("no Forget item under %q", app.Label)
		}
		it.click(t, forget.ID)
		testbus.WaitFor(t, wait, "the app to be forgotten", func() bool {
			_, found := it.layout(t).find("fetcher (")
			return !found
		})
	})

	t.Run("learned apps adopted from the menu", func(t *testing.T) {
		if err := client.SetMode(ctx, dbusapi.Learning); err != nil {
			t.Fatal(err)
		}
		it.waitIcon(t, icons.Learning)
		exe := kerneltest.SharedCopy(t)
		c := h.cg.Start(t, kerneltest.Options{Exe: exe}, "connectmany", h.tcp.String(), "1")
		if r := c.Next(t); r.Err != "" {
			t.Fatalf("connect in learning mode: %s", r.Err)
		}
		// The client stays alive until the helper has looked at it.
		defer c.Wait(t)
		// No signal announces a learned app: the tray reads the list
		// when its menu opens, as a host shows it.
		var all menuNode
		testbus.WaitFor(t, wait, "Allow all learned", func() bool {
			it.event(t, 0, "opened")
			learned, ok := it.layout(t).find("Learned (1)")
			if ok {
				all, ok = learned.find("Allow all learned")
			}
			return ok
		})
		it.click(t, all.ID)
		it.waitItem(t, "Learned (0)", nil)
		it.waitItem(t, filepath.Base(exe)+" (allow)", nil)
		apps, err := client.Apps(ctx)
		if err != nil || !slices.ContainsFunc(apps, func(a dbusapi.App) bool { return a.Path == exe && a.Verdict == dbusapi.Allow }) {
			t.Errorf("apps = %+v, %v; want %s allowed", apps, err, exe)
		}
	})
}

func waitTimeout(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// findColour reports whether the image file has a pixel of colour c
// (within a small tolerance) inside r.
func findColour(t *testing.T, file string, r image.Rectangle, c color.RGBA) bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	img, _, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		return false // partially written
	}
	near := func(a uint32, b uint8) bool { d := int(a>>8) - int(b); return d > -12 && d < 12 }
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			if near(pr, c.R) && near(pg, c.G) && near(pb, c.B) {
				return true
			}
		}
	}
	return false
}

// tlogWriter logs through t.Log, so lines appear only on failure or -v.
type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
