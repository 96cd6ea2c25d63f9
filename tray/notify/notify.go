// Package notify shows desktop notifications: prompts with actions through
// org.freedesktop.Notifications on the session bus, and plain alerts
// through beeep.
package notify

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gen2brain/beeep"
	"github.com/godbus/dbus/v5"
)

// Wire names of the freedesktop notification service.
const (
	BusName    = "org.freedesktop.Notifications"
	ObjectPath = dbus.ObjectPath("/org/freedesktop/Notifications")
	Interface  = "org.freedesktop.Notifications"
)

// Urgency levels of the urgency hint.
const (
	Low      byte = 0
	Normal   byte = 1
	Critical byte = 2
)

// ActionSpec is one button of a notification.
type ActionSpec struct {
	Key   string
	Label string
}

// Notification is what Notify shows.
type Notification struct {
	AppName string
	// Icon is an icon theme name or a file path.
	Icon    string
	Summary string
	Body    string
	Actions []ActionSpec
	Urgency byte
	// Timeout is how long the server shows it: 0 until closed, negative
	// for the server's default.
	Timeout time.Duration
	// ReplacesID replaces the notification with that id when nonzero.
	ReplacesID uint32
}

// EventKind says what happened to a notification.
type EventKind int

// Event kinds.
const (
	// ActionInvoked: the user chose Event.Action.
	ActionInvoked EventKind = iota + 1
	// Closed: the notification went away (Event.Reason says why).
	Closed
)

// Close reasons of the NotificationClosed signal.
const (
	ReasonExpired   uint32 = 1
	ReasonDismissed uint32 = 2
	ReasonClosed    uint32 = 3
)

// Event is a signal from the notification server about a notification.
type Event struct {
	Kind   EventKind
	ID     uint32
	Action string
	Reason uint32
}

// Notifier sends notifications over a session bus connection and reports
// their actions. It is safe for concurrent use.
type Notifier struct {
	conn   *dbus.Conn
	obj    dbus.BusObject
	log    *slog.Logger
	sigs   chan *dbus.Signal
	events chan Event
	done   chan struct{}
	once   sync.Once
}

// matchOpts select the server's signals.
func matchOpts() []dbus.MatchOption {
	return []dbus.MatchOption{
		dbus.WithMatchSender(BusName),
		dbus.WithMatchObjectPath(ObjectPath),
		dbus.WithMatchInterface(Interface),
	}
}

// New subscribes to the notification server's signals on conn. The
// server need not be running yet. Close ends the subscription; the
// connection stays open.
func New(conn *dbus.Conn, logger *slog.Logger) (*Notifier, error) {
	if err := conn.AddMatchSignal(matchOpts()...); err != nil {
		return nil, fmt.Errorf("subscribe to notification signals: %w", err)
	}
	n := &Notifier{
		conn:   conn,
		obj:    conn.Object(BusName, ObjectPath),
		log:    logger.With("component", "notify"),
		sigs:   make(chan *dbus.Signal, 64),
		events: make(chan Event, 64),
		done:   make(chan struct{}),
	}
	conn.Signal(n.sigs)
	go n.loop()
	return n, nil
}

// Events delivers ActionInvoked and Closed events until Close.
func (n *Notifier) Events() <-chan Event { return n.events }

func (n *Notifier) loop() {
	defer close(n.events)
	for {
		var sig *dbus.Signal
		select {
		case <-n.done:
			return
		case sig = <-n.sigs:
		}
		if sig == nil {
			return
		}
		var ev Event
		var err error
		switch sig.Name {
		case Interface + ".ActionInvoked":
			ev.Kind = ActionInvoked
			err = dbus.Store(sig.Body, &ev.ID, &ev.Action)
		case Interface + ".NotificationClosed":
			ev.Kind = Closed
			err = dbus.Store(sig.Body, &ev.ID, &ev.Reason)
		default:
			continue
		}
		if err != nil {
			n.log.Warn("malformed notification signal", "signal", sig.Name, "sender", sig.Sender, "err", err)
			continue
		}
		select {
		case n.events <- ev:
		case <-n.done:
			return
		}
	}
}

// Notify shows nt and returns its id.
func (n *Notifier) Notify(ctx context.Context, nt Notification) (uint32, error) {
	actions := make([]string, 0, 2*len(nt.Actions))
	for _, a := range nt.Actions {
		actions = append(actions, a.Key, a.Label)
	}
	hints := map[string]dbus.Variant{"urgency": dbus.MakeVariant(nt.Urgency)}
	timeout := int32(-1)
	if nt.Timeout >= 0 {
		timeout = int32(nt.Timeout.Milliseconds())
	}
	var id uint32
	err := n.obj.CallWithContext(ctx, Interface+".Notify", 0, nt.AppName, nt.ReplacesID, nt.Icon,
		nt.Summary, nt.Body, actions, hints, timeout).Store(&id)
	if err != nil {
		return 0, fmt.Errorf("notify: %w", err)
	}
	return id, nil
}

// CloseNotification closes notification id.
func (n *Notifier) CloseNotification(ctx context.Context, id uint32) error {
	if err := n.obj.CallWithContext(ctx, Interface+".CloseNotification", 0, id).Err; err != nil {
		return fmt.Errorf("close notification %d: %w", id, err)
	}
	return nil
}

// Capabilities returns the server's capabilities, e.g. "actions".
func (n *Notifier) Capabilities(ctx context.Context) ([]string, error) {
	var caps []string
	if err := n.obj.CallWithContext(ctx, Interface+".GetCapabilities", 0).Store(&caps); err != nil {
		return nil, fmt.Errorf("notification capabilities: %w", err)
	}
	return caps, nil
}

// Close ends the signal subscription.
func (n *Notifier) Close() error {
	var err error
	n.once.Do(func() {
		close(n.done)
		n.conn.RemoveSignal(n.sigs)
		err = n.conn.RemoveMatchSignal(matchOpts()...)
	})
	if err != nil {
		return fmt.Errorf("unsubscribe from notification signals: %w", err)
	}
	return nil
}

// Alert shows a plain notification without actions through beeep, which
// uses the process's shared session bus connection and falls back to
// notify-send. icon is a PNG, or nil.
func Alert(title, body string, icon []byte) error {
	var ico any = ""
	if len(icon) > 0 {
		ico = icon
	}
	if err := beeep.Notify(title, body, ico); err != nil {
		return fmt.Errorf("alert: %w", err)
	}
	return nil
}
