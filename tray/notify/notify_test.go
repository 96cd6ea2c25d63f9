package notify

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gen2brain/beeep"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/internal/testenv"
)

// sessionBusConf is a session bus without service activation.
const sessionBusConf = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=@DIR@/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`

// startBus runs a private session bus for t and returns its address.
func startBus(t *testing.T) string {
	t.Helper()
	testenv.RequireTool(t, "dbus-daemon")
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(conf, []byte(strings.ReplaceAll(sessionBusConf, "@DIR@", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			addr <- strings.TrimSpace(sc.Text())
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon did not print its address")
	}
	return ""
}

// server is a notification server stand-in on the bus: it records calls
// and lets the test emit signals. The same client paths run against dunst
// in the tray's desktop test.
type server struct {
	conn *dbus.Conn
	mu   sync.Mutex
	got  []recorded
	next uint32
	seen chan struct{}
}

type recorded struct {
	App, Summary, Body string
	Replaces           uint32
	Actions            []string
	Urgency            byte
	Timeout            int32
	Closed             uint32
}

func (s *server) Notify(app string, replaces uint32, icon, summary, body string, actions []string,
	hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, _ := hints["urgency"].Value().(byte)
	s.got = append(s.got, recorded{App: app, Summary: summary, Body: body, Replaces: replaces, Actions: actions, Urgency: u, Timeout: timeout})
	select {
	case s.seen <- struct{}{}:
	default:
	}
	if replaces != 0 {
		return replaces, nil
	}
	s.next++
	return s.next, nil
}

func (s *server) CloseNotification(id uint32) *dbus.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, recorded{Closed: id})
	return nil
}

func (s *server) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"actions", "body"}, nil
}

func (s *server) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "test", "aegis", "1", "1.2", nil
}

func (s *server) emit(t *testing.T, member string, body ...any) {
	t.Helper()
	if err := s.conn.Emit(ObjectPath, Interface+"."+member, body...); err != nil {
		t.Fatal(err)
	}
}

func serve(t *testing.T, addr string) *server {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &server{conn: conn, seen: make(chan struct{}, 16)}
	if err := conn.Export(s, ObjectPath, Interface); err != nil {
		t.Fatal(err)
	}
	if r, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue); err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: %v %v", BusName, r, err)
	}
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func nextEvent(t *testing.T, n *Notifier) Event {
	t.Helper()
	select {
	case ev := <-n.Events():
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no notification event")
	}
	return Event{}
}

func TestNotifier(t *testing.T) {
	addr := startBus(t)
	srv := serve(t, addr)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	n, err := New(conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx := context.Background()

	caps, err := n.Capabilities(ctx)
	if err != nil || !cmp.Equal(caps, []string{"actions", "body"}) {
		t.Errorf("Capabilities = %v, %v", caps, err)
	}
	nt := Notification{AppName: "Aegis", Summary: "s", Body: "b", Urgency: Critical,
		Actions: []ActionSpec{{"allow-once", "Allow once"}, {"deny", "Deny"}}}
	id, err := n.Notify(ctx, nt)
	if err != nil {
		t.Fatal(err)
	}
	nt.ReplacesID, nt.Timeout = id, -1
	if id2, err := n.Notify(ctx, nt); err != nil || id2 != id {
		t.Errorf("replacing Notify = %d, %v; want %d", id2, err, id)
	}
	if err := n.CloseNotification(ctx, id); err != nil {
		t.Fatal(err)
	}
	want := []recorded{
		{App: "Aegis", Summary: "s", Body: "b", Actions: []string{"allow-once", "Allow once", "deny", "Deny"}, Urgency: Critical, Timeout: 0},
		{App: "Aegis", Summary: "s", Body: "b", Replaces: id, Actions: []string{"allow-once", "Allow once", "deny", "Deny"}, Urgency: Critical, Timeout: -1},
		{Closed: id},
	}
	srv.mu.Lock()
	diff := cmp.Diff(want, srv.got)
	srv.mu.Unlock()
	if diff != "" {
		t.Errorf("server saw (-want +got):\n%s", diff)
	}

	// A malformed signal is skipped; the next good ones arrive in order.
	srv.emit(t, "ActionInvoked", "not-an-id", uint32(7))
	srv.emit(t, "ActionInvoked", id, "deny")
	srv.emit(t, "NotificationClosed", id, ReasonDismissed)
	if ev := nextEvent(t, n); ev != (Event{Kind: ActionInvoked, ID: id, Action: "deny"}) {
		t.Errorf("event = %+v, want the deny action", ev)
	}
	if ev := nextEvent(t, n); ev != (Event{Kind: Closed, ID: id, Reason: ReasonDismissed}) {
		t.Errorf("event = %+v, want closed", ev)
	}
	if err := n.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, ok := <-n.Events(); ok {
		t.Error("Events still open after Close")
	}
}

func TestNotifierNoServer(t *testing.T) {
	addr := startBus(t)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	n, err := New(conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = n.Notify(ctx, Notification{Summary: "s"})
	if err == nil || !strings.HasPrefix(err.Error(), "notify: ") {
		t.Fatalf("Notify without a server = %v, want a wrapped error", err)
	}
	if err := n.CloseNotification(ctx, 1); err == nil {
		t.Error("CloseNotification without a server: no error")
	}
}

// TestAlert checks that Alert reaches the server over the session bus
// (beeep's D-Bus path), with the PNG icon as image data.
func TestAlert(t *testing.T) {
	addr := startBus(t)
	srv := serve(t, addr)
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", addr)
	// beeep falls back to notify-send silently: make sure it is not there.
	t.Setenv("PATH", t.TempDir())
	beeep.AppName = "Aegis"
	if err := Alert("Aegis: rules tampered with", "restored", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.seen:
	case <-time.After(5 * time.Second):
		t.Fatal("alert never reached the server")
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if got := srv.got[0]; got.App != "Aegis" || got.Summary != "Aegis: rules tampered with" || got.Body != "restored" {
		t.Errorf("alert = %+v", got)
	}
}
