package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/aegisfw/aegis/helper/dbusapi"
)

// dbusCallGrace bounds the goodbye call after an interrupt.
const dbusCallGrace = 2 * time.Second

// AgentPath is where "aegisctl agent" exports its prompt agent.
const AgentPath = dbus.ObjectPath("/io/github/aegisfw/aegisctl/Agent")

// lineWriter writes whole lines from several goroutines.
type lineWriter struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (l *lineWriter) write(text string, v any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.json {
		b, err := json.Marshal(v)
		if err != nil {
			b = []byte(fmt.Sprintf(`{"error":%q}`, err.Error()))
		}
		l.w.Write(append(b, '\n'))
		return
	}
	io.WriteString(l.w, text)
}

// AgentLine is one line of "aegisctl agent --json".
type AgentLine struct {
	// Event is prompt, cancel or registered.
	Event  string
	Prompt *dbusapi.Prompt `json:",omitempty"`
	ID     string          `json:",omitempty"`
}

// terminalAgent prints prompts, each once.
type terminalAgent struct {
	out  *lineWriter
	mu   sync.Mutex
	seen map[string]bool
}

func (a *terminalAgent) Prompt(p dbusapi.Prompt) {
	a.mu.Lock()
	dup := a.seen[p.ID]
	a.seen[p.ID] = true
	a.mu.Unlock()
	if !dup {
		a.out.write(promptText(p), AgentLine{Event: "prompt", Prompt: &p})
	}
}

func (a *terminalAgent) Cancel(id string) {
	a.mu.Lock()
	delete(a.seen, id)
	a.mu.Unlock()
	a.out.write(fmt.Sprintf("prompt %s: answered or timed out\n", id), AgentLine{Event: "cancel", ID: id})
}

// runAgent registers a terminal agent and prints prompts until ctx ends.
// When the helper restarts, the agent registers again and shows the
// prompts still pending.
func runAgent(ctx context.Context, c *command) error {
	out := &lineWriter{w: c.io.Out, json: c.json}
	a := &terminalAgent{out: out, seen: map[string]bool{}}
	owners := make(chan *dbus.Signal, 16)
	c.conn.Signal(owners)
	defer c.conn.RemoveSignal(owners)
	err := c.conn.AddMatchSignalContext(ctx,
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, dbusapi.BusName))
	if err != nil {
		return fmt.Errorf("watch the helper: %w", err)
	}
	register := func() error {
		if err := c.client.RegisterAgent(ctx, AgentPath, a); err != nil {
			return fmt.Errorf("register agent: %w", err)
		}
		out.write("agent registered; waiting for prompts\n", AgentLine{Event: "registered"})
		ps, err := c.client.Prompts(ctx)
		if err != nil {
			return err
		}
		for _, p := range ps {
			a.Prompt(p)
		}
		return nil
	}
	if err := register(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			uctx, cancel := context.WithTimeout(context.Background(), dbusCallGrace)
			defer cancel()
			// The helper may be gone; the registration ends with the
			// connection anyway.
			_ = c.client.UnregisterAgent(uctx, AgentPath)
			return nil
		case sig := <-owners:
			if sig == nil || sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(sig.Body) != 3 {
				continue
			}
			if newOwner, _ := sig.Body[2].(string); newOwner != "" {
				if err := register(); err != nil {
					return err
				}
			} else {
				out.write("helper left the bus; waiting for it\n", AgentLine{Event: "helper-gone"})
			}
		}
	}
}

// watch prints the helper's signals until ctx ends.
func watch(ctx context.Context, c *command) error {
	evs, err := c.client.Watch(ctx)
	if err != nil {
		return err
	}
	out := &lineWriter{w: c.io.Out, json: c.json}
	out.write("watching; interrupt to stop\n", dbusapi.Event{Kind: "watching"})
	for ev := range evs {
		out.write(eventText(ev), ev)
	}
	return nil
}

func eventText(ev dbusapi.Event) string {
	switch ev.Kind {
	case "ModeChanged":
		return fmt.Sprintf("mode changed: %s\n", ev.Mode)
	case "HashChanged":
		return fmt.Sprintf("hash changed: %s is %s\n", ev.Path, ev.State)
	case "Tampered":
		return fmt.Sprintf("TAMPERED: %s was changed behind the helper's back and restored; rejected copy: %s\n", ev.Path, orDash(ev.Rejected))
	case "PromptRequested":
		return fmt.Sprintf("prompt %s for user %s\n", ev.PromptID, user(ev.UID))
	case "PromptResolved":
		return fmt.Sprintf("prompt %s resolved: %s\n", ev.PromptID, ev.Verdict)
	default:
		return ev.Kind + "\n"
	}
}
