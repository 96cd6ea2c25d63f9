package tray

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/tray/notify"
)

// recorder is a notification server stand-in that records calls; the
// same paths run against dunst in TestTrayDesktop.
type recorder struct {
	next   uint32
	shown  map[uint32]notify.Notification
	closed []uint32
}

func (r *recorder) Notify(_ context.Context, n notify.Notification) (uint32, error) {
	id := n.ReplacesID
	if id == 0 {
		r.next++
		id = r.next
	}
	r.shown[id] = n
	return id, nil
}

func (r *recorder) CloseNotification(_ context.Context, id uint32) error {
	delete(r.shown, id)
	r.closed = append(r.closed, id)
	return nil
}

func TestPromptNotesCoalesce(t *testing.T) {
	ctx := context.Background()
	r := &recorder{shown: map[uint32]notify.Notification{}}
	pn := newPromptNotes(r)
	p2 := curlPrompt
	p2.ID, p2.Host, p2.Addr, p2.Port = "p2", "", "10.0.0.2", 80
	other := dbusapi.Prompt{ID: "p3", UID: 1000, Exe: "/usr/bin/wget", Addr: "10.0.0.3", Port: 80}
	for _, p := range []dbusapi.Prompt{curlPrompt, p2, other, curlPrompt} {
		if err := pn.add(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.shown) != 2 {
		t.Fatalf("%d notifications for two apps, want 2", len(r.shown))
	}
	n := r.shown[1]
	want := notify.Notification{
		AppName: "Aegis", Icon: "aegis-alert", Summary: "Aegis: curl (2 connections)",
		Body:    "curl wants to connect to example.com (93.184.216.34:443)\nalso 10.0.0.2:80\ngnome-terminal → bash → curl",
		Actions: PromptActions(), Urgency: notify.Critical, ReplacesID: 1,
	}
	if diff := cmp.Diff(want, n); diff != "" {
		t.Errorf("coalesced notification (-want +got):\n%s", diff)
	}

	got, err := pn.action(1, KeyAlwaysAllow)
	if err != nil {
		t.Fatal(err)
	}
	wantAnswers := []answer{{"p1", dbusapi.Allow, dbusapi.Always}, {"p2", dbusapi.Allow, dbusapi.Once}}
	if diff := cmp.Diff(wantAnswers, got); diff != "" {
		t.Errorf("Always allow answers (-want +got):\n%s", diff)
	}
	if got, _ := pn.action(2, KeyDeny); !cmp.Equal(got, []answer{{"p3", dbusapi.Deny, dbusapi.Once}}) {
		t.Errorf("Deny answers = %v", got)
	}
	if _, err := pn.action(2, "bogus"); err == nil {
		t.Error("unknown action key: no error")
	}
	if _, err := pn.action(99, KeyDeny); err == nil {
		t.Error("unknown notification: no error")
	}

	// Withdrawing one prompt updates the app's notification; the last one closes it.
	if err := pn.remove(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if s := r.shown[1].Summary; s != "Aegis: curl" {
		t.Errorf("after withdrawing p1: summary %q, want %q", s, "Aegis: curl")
	}
	pn.remove(ctx, "p2")
	pn.remove(ctx, "p2") // twice: nothing left to do
	if diff := cmp.Diff([]uint32{1}, r.closed); diff != "" {
		t.Errorf("closed (-want +got):\n%s", diff)
	}
	// A notification closed by the user leaves its prompt pending; the
	// app's next prompt shows a new notification with both.
	delete(r.shown, 2) // the server closed it
	pn.closed(2)
	if _, err := pn.action(2, KeyDeny); err == nil {
		t.Error("action on a closed notification: no error")
	}
	four := other
	four.ID = "p4"
	pn.add(ctx, four)
	if s := r.shown[3].Summary; s != "Aegis: wget (2 connections)" {
		t.Errorf("after closing: new summary %q", s)
	}
	if err := pn.clear(ctx); err != nil || len(r.shown) != 0 {
		t.Errorf("clear: %v, %d left shown", err, len(r.shown))
	}
}

func TestPromptNotificationMarkup(t *testing.T) {
	p := dbusapi.Prompt{ID: "x", Exe: "/tmp/a<b>&c", Addr: "10.0.0.1", Port: 1}
	if got := promptNotification([]dbusapi.Prompt{p}, true).Body; got != "a&lt;b&gt;&amp;c wants to connect to 10.0.0.1:1" {
		t.Errorf("escaped body = %q", got)
	}
	var ps []dbusapi.Prompt
	for i := range 6 {
		q := p
		q.Port = uint16(i)
		ps = append(ps, q)
	}
	body := promptNotification(ps, false).Body
	if want := "a<b>&c wants to connect to 10.0.0.1:0\nalso 10.0.0.1:1\nalso 10.0.0.1:2\nalso 10.0.0.1:3\nand 2 more"; body != want {
		t.Errorf("body of 6 = %q, want %q", body, want)
	}
}
