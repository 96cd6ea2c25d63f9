package dbusapi

import (
	"context"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
)

// Client calls aegis-helper over a bus connection. Errors that the helper
// names match ErrNotAuthorized, ErrCancelled, ErrInvalidArgument,
// ErrNotFound and ErrTampered with errors.Is. It is safe for concurrent
// use.
type Client struct {
	conn *dbus.Conn
	obj  dbus.BusObject
	// flags go on calls that may need authorization.
	flags dbus.Flags
}

// NewClient returns a Client using conn (usually the system bus).
// With interactive set, calls that need authorization allow polkit to
// show an authentication dialog.
func NewClient(conn *dbus.Conn, interactive bool) *Client {
	c := &Client{conn: conn, obj: conn.Object(BusName, ObjectPath)}
	if interactive {
		c.flags = dbus.FlagAllowInteractiveAuthorization
	}
	return c
}

func (c *Client) call(ctx context.Context, iface, method string, flags dbus.Flags, args []any, out ...any) error {
	var call *dbus.Call
	if flags&dbus.FlagAllowInteractiveAuthorization != 0 {
		call = c.interactiveCall(ctx, iface, method, flags, args)
	} else {
		call = c.obj.CallWithContext(ctx, iface+"."+method, flags, args...)
	}
	if call.Err != nil {
		return fmt.Errorf("%s: %w", method, fromDBusError(call.Err))
	}
	if len(out) == 0 {
		return nil
	}
	if err := call.Store(out...); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

// interactiveCall sends a method call carrying flags as given:
// dbus.Object.Call drops FlagAllowInteractiveAuthorization (godbus
// v5.2.4 keeps only NoAutoStart and NoReplyExpected).
func (c *Client) interactiveCall(ctx context.Context, iface, method string, flags dbus.Flags, args []any) *dbus.Call {
	msg := &dbus.Message{
		Type:  dbus.TypeMethodCall,
		Flags: flags,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldDestination: dbus.MakeVariant(BusName),
			dbus.FieldPath:        dbus.MakeVariant(ObjectPath),
			dbus.FieldInterface:   dbus.MakeVariant(iface),
			dbus.FieldMember:      dbus.MakeVariant(method),
		},
		Body: args,
	}
	if len(args) > 0 {
		msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(args...))
	}
	// The connection completes the call when ctx is done.
	call := c.conn.SendWithContext(ctx, msg, make(chan *dbus.Call, 1))
	<-call.Done
	return call
}

// Status returns the firewall's state.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.call(ctx, FirewallInterface, "GetStatus", 0, nil, &st)
}

// Counters returns the totals since the helper started.
func (c *Client) Counters(ctx context.Context) (Counters, error) {
	var cs Counters
	return cs, c.call(ctx, FirewallInterface, "GetCounters", 0, nil, &cs)
}

// SetMode switches the mode (polkit set-mode).
func (c *Client) SetMode(ctx context.Context, m Mode) error {
	return c.call(ctx, FirewallInterface, "SetMode", c.flags, []any{string(m)})
}

// Mode reads the Mode property.
func (c *Client) Mode(ctx context.Context) (Mode, error) {
	var m string
	err := c.call(ctx, "org.freedesktop.DBus.Properties", "Get", 0, []any{FirewallInterface, "Mode"}, &m)
	return Mode(m), err
}

// Apps lists the apps the caller may see.
func (c *Client) Apps(ctx context.Context) ([]App, error) {
	var apps []App
	return apps, c.call(ctx, AppsInterface, "ListApps", 0, nil, &apps)
}

// Allow trusts the executable at path for uid, or AnyUser (polkit modify-rules).
func (c *Client) Allow(ctx context.Context, path string, uid uint32) error {
	return c.call(ctx, AppsInterface, "Allow", c.flags, []any{path, uid})
}

// Deny refuses the executable at path for uid, or AnyUser (polkit modify-rules).
func (c *Client) Deny(ctx context.Context, path string, uid uint32) error {
	return c.call(ctx, AppsInterface, "Deny", c.flags, []any{path, uid})
}

// Forget removes the rule for path and uid (polkit modify-rules).
func (c *Client) Forget(ctx context.Context, path string, uid uint32) error {
	return c.call(ctx, AppsInterface, "Forget", c.flags, []any{path, uid})
}

// Rehash registers the current hash of the app at path (polkit rehash).
func (c *Client) Rehash(ctx context.Context, path string) (Rehashed, error) {
	var r Rehashed
	return r, c.call(ctx, AppsInterface, "Rehash", c.flags, []any{path}, &r)
}

// RehashAll rehashes every app whose hash changed (polkit rehash).
func (c *Client) RehashAll(ctx context.Context) ([]Rehashed, error) {
	var rs []Rehashed
	return rs, c.call(ctx, AppsInterface, "RehashAll", c.flags, nil, &rs)
}

// Learned lists the apps recorded in learning mode that the caller may see.
func (c *Client) Learned(ctx context.Context) ([]Learned, error) {
	var ls []Learned
	return ls, c.call(ctx, AppsInterface, "ListLearned", 0, nil, &ls)
}

// AdoptLearned turns learned apps into allow rules (polkit modify-rules).
func (c *Client) AdoptLearned(ctx context.Context, paths []string) error {
	return c.call(ctx, AppsInterface, "AdoptLearned", c.flags, []any{paths})
}

// Rules returns the rules the caller may see.
func (c *Client) Rules(ctx context.Context) ([]Rule, error) {
	var rs []Rule
	return rs, c.call(ctx, RulesInterface, "Show", 0, nil, &rs)
}

// ExportRules returns the rule file (polkit modify-rules).
func (c *Client) ExportRules(ctx context.Context) (string, error) {
	var s string
	return s, c.call(ctx, RulesInterface, "Export", c.flags, nil, &s)
}

// ImportRules replaces the rules (polkit modify-rules).
func (c *Client) ImportRules(ctx context.Context, toml string) error {
	return c.call(ctx, RulesInterface, "Import", c.flags, []any{toml})
}

// Prompts lists the pending prompts about the caller's processes.
func (c *Client) Prompts(ctx context.Context) ([]Prompt, error) {
	var ps []Prompt
	return ps, c.call(ctx, PromptsInterface, "ListPrompts", 0, nil, &ps)
}

// Answer answers prompt id (polkit answer-prompt, or modify-rules for Always).
func (c *Client) Answer(ctx context.Context, id string, v Verdict, s Scope) error {
	return c.call(ctx, PromptsInterface, "Answer", c.flags, []any{id, string(v), string(s)})
}

// Flows lists the caller's connections.
func (c *Client) Flows(ctx context.Context) ([]Flow, error) {
	var fs []Flow
	return fs, c.call(ctx, FlowsInterface, "ListFlows", 0, nil, &fs)
}

// Agent receives prompts. Its methods run on the bus connection's
// goroutines and must not block for long.
type Agent interface {
	// Prompt shows p; the user's answer goes back through Client.Answer.
	Prompt(p Prompt)
	// Cancel stops showing prompt id.
	Cancel(id string)
}

// agentObj serves io.github.aegisfw.Aegis1.Agent for an Agent, accepting
// calls from the owner of BusName only.
type agentObj struct {
	conn  *dbus.Conn
	agent Agent
}

func (o *agentObj) fromHelper(sender dbus.Sender) *dbus.Error {
	var owner string
	err := o.conn.BusObject().Call("org.freedesktop.DBus.GetNameOwner", 0, BusName).Store(&owner)
	if err != nil || owner != string(sender) {
		return dbus.NewError(ErrorNotAuthorized, []any{"prompts are accepted from " + BusName + " only"})
	}
	return nil
}

func (o *agentObj) Prompt(sender dbus.Sender, p Prompt) *dbus.Error {
	if err := o.fromHelper(sender); err != nil {
		return err
	}
	o.agent.Prompt(p)
	return nil
}

func (o *agentObj) Cancel(sender dbus.Sender, id string) *dbus.Error {
	if err := o.fromHelper(sender); err != nil {
		return err
	}
	o.agent.Cancel(id)
	return nil
}

// RegisterAgent exports a at path on the client's connection and
// registers it with the helper. The registration ends with
// UnregisterAgent or when the connection closes.
func (c *Client) RegisterAgent(ctx context.Context, path dbus.ObjectPath, a Agent) error {
	if err := c.conn.Export(&agentObj{conn: c.conn, agent: a}, path, AgentInterface); err != nil {
		return fmt.Errorf("export agent: %w", err)
	}
	if err := c.conn.Export(introspect.Introspectable(AgentXML), path, "org.freedesktop.DBus.Introspectable"); err != nil {
		return fmt.Errorf("export agent: %w", err)
	}
	if err := c.call(ctx, PromptsInterface, "RegisterAgent", 0, []any{path}); err != nil {
		c.unexportAgent(path)
		return err
	}
	return nil
}

// UnregisterAgent ends the registration at path and removes the object.
func (c *Client) UnregisterAgent(ctx context.Context, path dbus.ObjectPath) error {
	err := c.call(ctx, PromptsInterface, "UnregisterAgent", 0, []any{path})
	c.unexportAgent(path)
	return err
}

func (c *Client) unexportAgent(path dbus.ObjectPath) {
	// Export(nil) cannot fail for a valid path; an invalid one was never exported.
	_ = c.conn.Export(nil, path, AgentInterface)
	_ = c.conn.Export(nil, path, "org.freedesktop.DBus.Introspectable")
}

// Event is a signal from the helper. Kind is the signal's member name
// (ModeChanged, AppsChanged, HashChanged, RulesChanged, Tampered,
// PromptRequested, PromptResolved); the fields that signal carries are set.
type Event struct {
	Kind     string
	Mode     Mode      // ModeChanged
	Path     string    // HashChanged, Tampered
	State    HashState // HashChanged
	Rejected string    // Tampered: where the rejected content was kept
	PromptID string    // PromptRequested, PromptResolved
	UID      uint32    // PromptRequested
	Verdict  Verdict   // PromptResolved
}

// Watch subscribes to the helper's signals. The channel delivers events
// until ctx is done, then closes. The subscription is active when Watch
// returns.
func (c *Client) Watch(ctx context.Context) (<-chan Event, error) {
	opts := []dbus.MatchOption{dbus.WithMatchSender(BusName), dbus.WithMatchObjectPath(ObjectPath)}
	if err := c.conn.AddMatchSignalContext(ctx, opts...); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	sigs := make(chan *dbus.Signal, 64)
	c.conn.Signal(sigs)
	out := make(chan Event, 64)
	go func() {
		defer close(out)
		defer func() {
			c.conn.RemoveSignal(sigs)
			// The connection may be closed already; nothing is left to undo then.
			_ = c.conn.RemoveMatchSignal(opts...)
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case sig, ok := <-sigs:
				if !ok {
					return
				}
				ev, ok := decodeEvent(sig)
				if !ok {
					continue
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// decodeEvent turns a helper signal into an Event.
func decodeEvent(sig *dbus.Signal) (Event, bool) {
	if sig.Path != ObjectPath || !strings.HasPrefix(sig.Name, BusName+".") {
		return Event{}, false
	}
	i := strings.LastIndexByte(sig.Name, '.')
	ev := Event{Kind: sig.Name[i+1:]}
	var err error
	switch sig.Name {
	case FirewallInterface + ".ModeChanged":
		err = dbus.Store(sig.Body, (*string)(&ev.Mode))
	case AppsInterface + ".AppsChanged", RulesInterface + ".RulesChanged":
	case AppsInterface + ".HashChanged":
		err = dbus.Store(sig.Body, &ev.Path, (*string)(&ev.State))
	case RulesInterface + ".Tampered":
		err = dbus.Store(sig.Body, &ev.Path, &ev.Rejected)
	case PromptsInterface + ".PromptRequested":
		err = dbus.Store(sig.Body, &ev.PromptID, &ev.UID)
	case PromptsInterface + ".PromptResolved":
		err = dbus.Store(sig.Body, &ev.PromptID, (*string)(&ev.Verdict))
	default:
		return Event{}, false
	}
	return ev, err == nil
}
