package tray

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/icons"
	"github.com/aegisfw/aegis/tray/notify"
)

// Action keys of a prompt notification.
const (
	KeyAllowOnce   = "allow-once"
	KeyAlwaysAllow = "always-allow"
	KeyDeny        = "deny"
)

// PromptActions returns the buttons of a prompt notification.
func PromptActions() []notify.ActionSpec {
	return []notify.ActionSpec{
		{Key: KeyAllowOnce, Label: "Allow once"},
		{Key: KeyAlwaysAllow, Label: "Always allow"},
		{Key: KeyDeny, Label: "Deny"},
	}
}

// noteSender is what promptNotes needs from *notify.Notifier.
type noteSender interface {
	Notify(ctx context.Context, n notify.Notification) (uint32, error)
	CloseNotification(ctx context.Context, id uint32) error
}

// answer is one Client.Answer call a notification action asks for.
type answer struct {
	ID      string
	Verdict dbusapi.Verdict
	Scope   dbusapi.Scope
}

// promptNotes shows pending prompts as notifications, one per app (its
// executable and user): further prompts of the app replace the app's
// notification instead of adding one. Not safe for concurrent use.
type promptNotes struct {
	sender noteSender
	markup bool // escape bodies for servers that parse markup
	groups map[string]*noteGroup
	byNote map[uint32]*noteGroup
	byID   map[string]*noteGroup
}

type noteGroup struct {
	key     string
	note    uint32 // 0 while not shown
	prompts []dbusapi.Prompt
}

func newPromptNotes(s noteSender) *promptNotes {
	return &promptNotes{sender: s, groups: map[string]*noteGroup{}, byNote: map[uint32]*noteGroup{}, byID: map[string]*noteGroup{}}
}

func groupKey(p dbusapi.Prompt) string { return p.Exe + "#" + strconv.FormatUint(uint64(p.UID), 10) }

// add shows p, in its app's notification.
func (pn *promptNotes) add(ctx context.Context, p dbusapi.Prompt) error {
	if _, ok := pn.byID[p.ID]; ok {
		return nil
	}
	k := groupKey(p)
	g := pn.groups[k]
	if g == nil {
		g = &noteGroup{key: k}
		pn.groups[k] = g
	}
	g.prompts = append(g.prompts, p)
	pn.byID[p.ID] = g
	return pn.show(ctx, g)
}

// remove stops showing prompt id: its app's notification closes when it
// was the last one and is updated otherwise.
func (pn *promptNotes) remove(ctx context.Context, id string) error {
	g := pn.byID[id]
	if g == nil {
		return nil
	}
	delete(pn.byID, id)
	for i, p := range g.prompts {
		if p.ID == id {
			g.prompts = append(g.prompts[:i], g.prompts[i+1:]...)
			break
		}
	}
	if len(g.prompts) > 0 {
		if g.note == 0 {
			return nil
		}
		return pn.show(ctx, g)
	}
	delete(pn.groups, g.key)
	if g.note == 0 {
		return nil
	}
	delete(pn.byNote, g.note)
	return pn.sender.CloseNotification(ctx, g.note)
}

// clear closes every notification and forgets every prompt.
func (pn *promptNotes) clear(ctx context.Context) error {
	var errs []error
	for id := range pn.byNote {
		errs = append(errs, pn.sender.CloseNotification(ctx, id))
	}
	clear(pn.groups)
	clear(pn.byNote)
	clear(pn.byID)
	return errors.Join(errs...)
}

// closed records that the server closed notification id; its prompts stay
// pending and show again with the app's next prompt.
func (pn *promptNotes) closed(id uint32) {
	if g := pn.byNote[id]; g != nil {
		delete(pn.byNote, id)
		g.note = 0
	}
}

// action returns the answers the user chose with action key on
// notification id: every prompt of the app is answered.
func (pn *promptNotes) action(id uint32, key string) ([]answer, error) {
	g := pn.byNote[id]
	if g == nil {
		return nil, fmt.Errorf("notification %d: no pending prompts", id)
	}
	var out []answer
	for i, p := range g.prompts {
		a := answer{ID: p.ID, Verdict: dbusapi.Allow, Scope: dbusapi.Once}
		switch key {
		case KeyAllowOnce:
		case KeyAlwaysAllow:
			// One rule covers the app; the others are allowed with it.
			if i == 0 {
				a.Scope = dbusapi.Always
			}
		case KeyDeny:
			a.Verdict = dbusapi.Deny
		default:
			return nil, fmt.Errorf("notification %d: unknown action %q", id, key)
		}
		out = append(out, a)
	}
	return out, nil
}

func (pn *promptNotes) show(ctx context.Context, g *noteGroup) error {
	nt := promptNotification(g.prompts, pn.markup)
	nt.ReplacesID = g.note
	id, err := pn.sender.Notify(ctx, nt)
	if err != nil {
		return err
	}
	if g.note != 0 && g.note != id {
		delete(pn.byNote, g.note)
	}
	g.note = id
	pn.byNote[id] = g
	return nil
}

// maxNoteDests is how many destinations a coalesced notification lists.
const maxNoteDests = 3

// promptNotification is the notification for the pending prompts of one
// app, newest last.
func promptNotification(ps []dbusapi.Prompt, markup bool) notify.Notification {
	first := ps[0]
	lines := []string{PromptText(first)}
	for i, p := range ps[1:] {
		if i == maxNoteDests {
			lines = append(lines, fmt.Sprintf("and %d more", len(ps)-1-i))
			break
		}
		lines = append(lines, "also "+destination(p.Host, p.Addr, p.Port, p.Proto))
	}
	if len(first.Lineage) > 0 {
		lines = append(lines, strings.Join(first.Lineage, " → "))
	}
	if first.Changed {
		lines = append(lines, changedNote(first))
	}
	body := strings.Join(lines, "\n")
	if markup {
		body = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(body)
	}
	summary := "Aegis: " + filepath.Base(first.Exe)
	if len(ps) > 1 {
		summary += fmt.Sprintf(" (%d connections)", len(ps))
	}
	return notify.Notification{
		AppName: "Aegis",
		Icon:    icons.Alert.Name(),
		Summary: summary,
		Body:    body,
		Actions: PromptActions(),
		Urgency: notify.Critical,
		// The helper withdraws the prompt at its timeout, which closes it.
		Timeout: 0,
	}
}
