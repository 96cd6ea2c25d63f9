package tray

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/icons"
)

// Limits on the menu's lists; longer lists end with a "… n more" line.
const (
	MaxPendingItems = 20
	MaxAppItems     = 50
	MaxLearnedItems = 50
	MaxRecentFlows  = 10
)

// State is what the tray knows about the helper: the input of BuildMenu
// and IconState.
type State struct {
	// Connected is whether the helper owns its bus name and answered.
	Connected bool
	Status    dbusapi.Status
	Apps      []dbusapi.App
	Learned   []dbusapi.Learned
	Prompts   []dbusapi.Prompt
	// Flows are the recent connections, oldest first.
	Flows []dbusapi.Flow
}

// ActionKind says what clicking a menu item does.
type ActionKind int

// Action kinds.
const (
	NoAction ActionKind = iota
	// SetMode switches the helper to Action.Mode.
	SetMode
	// AnswerPrompt answers Action.PromptID with Verdict and Scope.
	AnswerPrompt
	// AllowApp and DenyApp set the verdict of Action.Path for Action.UID.
	AllowApp
	DenyApp
	// RehashApp re-registers the hash of Action.Path.
	RehashApp
	// ForgetApp removes the rule of Action.Path for Action.UID.
	ForgetApp
	// RehashAll re-registers every changed app.
	RehashAll
	// AdoptLearned turns the learned apps Action.Paths into allow rules.
	AdoptLearned
	// Quit ends the tray.
	Quit
)

// String returns the kind's name for logs.
func (k ActionKind) String() string {
	names := [...]string{"none", "set-mode", "answer", "allow", "deny", "rehash", "forget", "rehash-all", "adopt-learned", "quit"}
	if k >= 0 && int(k) < len(names) {
		return names[k]
	}
	return "ActionKind(" + strconv.Itoa(int(k)) + ")"
}

// Action is what a menu item does when clicked.
type Action struct {
	Kind     ActionKind
	Mode     dbusapi.Mode
	PromptID string
	Verdict  dbusapi.Verdict
	Scope    dbusapi.Scope
	Path     string
	UID      uint32
	Paths    []string
}

// Mark is the coloured dot in front of an app.
type Mark int

// Marks.
const (
	NoMark Mark = iota
	// Green: the app's file matches its registered hash.
	Green
	// Red: the file changed or is missing.
	Red
)

// Item is one menu entry. Key identifies it among its siblings for as long
// as it means the same thing, so a menu host's click on a stale item never
// reaches a different app.
type Item struct {
	Key       string
	Label     string
	Separator bool
	// Checkable items show a check box, ticked when Checked.
	Checkable bool
	Checked   bool
	Disabled  bool
	Mark      Mark
	Action    Action
	Children  []Item
}

// TopKeys returns the keys of the top-level items, the same in every menu.
func TopKeys() []string {
	return []string{"status", "mode", "sep-1", "pending", "learned", "apps", "recent", "sep-2", "quit"}
}

// IconState returns the icon the tray shows for st.
func IconState(st State) icons.State {
	switch {
	case !st.Connected:
		return icons.Disconnected
	case st.Status.Tampered || changedApps(st.Apps) > 0:
		return icons.Alert
	case st.Status.Mode == dbusapi.Learning:
		return icons.Learning
	}
	return icons.Enforcing
}

// StatusLine is the first line of the menu and the tray's tooltip.
func StatusLine(st State) string {
	if !st.Connected {
		return "Aegis: helper not running"
	}
	mode := "enforcing"
	if st.Status.Mode == dbusapi.Learning {
		mode = "learning"
	}
	var extra []string
	if st.Status.Tampered {
		extra = append(extra, "rules tampered with")
	}
	if n := changedApps(st.Apps); n > 0 {
		extra = append(extra, plural(n, "app changed", "apps changed"))
	}
	if n := len(st.Prompts); n > 0 {
		extra = append(extra, strconv.Itoa(n)+" pending")
	}
	if len(extra) == 0 {
		return "Aegis: " + mode
	}
	return "Aegis: " + mode + " (" + strings.Join(extra, ", ") + ")"
}

// BuildMenu turns st into the tray menu. Its top level always has the
// items named by TopKeys(), in that order.
func BuildMenu(st State) []Item {
	learning := st.Status.Mode == dbusapi.Learning
	modeTarget := dbusapi.Learning
	if learning {
		modeTarget = dbusapi.Enforce
	}
	return []Item{
		{Key: "status", Label: StatusLine(st), Disabled: true},
		{Key: "mode", Label: "Learning mode", Checkable: true, Checked: st.Connected && learning,
			Disabled: !st.Connected, Action: Action{Kind: SetMode, Mode: modeTarget}},
		{Key: "sep-1", Separator: true},
		pendingMenu(st),
		learnedMenu(st),
		appsMenu(st),
		recentMenu(st),
		{Key: "sep-2", Separator: true},
		{Key: "quit", Label: "Quit", Action: Action{Kind: Quit}},
	}
}

func pendingMenu(st State) Item {
	it := Item{Key: "pending", Label: fmt.Sprintf("Pending (%d)", len(st.Prompts)), Disabled: !st.Connected || len(st.Prompts) == 0}
	for i, p := range st.Prompts {
		if i == MaxPendingItems {
			it.Children = append(it.Children, more(len(st.Prompts)-i))
			break
		}
		ans := func(key, label string, v dbusapi.Verdict, s dbusapi.Scope) Item {
			return Item{Key: key, Label: label, Action: Action{Kind: AnswerPrompt, PromptID: p.ID, Verdict: v, Scope: s}}
		}
		children := []Item{}
		if len(p.Lineage) > 0 {
			children = append(children, Item{Key: "lineage", Label: strings.Join(p.Lineage, " → "), Disabled: true})
		}
		if p.Changed {
			children = append(children, Item{Key: "changed", Label: changedNote(p), Disabled: true})
		}
		children = append(children,
			ans("once", "Allow once", dbusapi.Allow, dbusapi.Once),
			ans("always", "Always allow", dbusapi.Allow, dbusapi.Always),
			ans("deny", "Deny", dbusapi.Deny, dbusapi.Once),
		)
		it.Children = append(it.Children, Item{Key: "prompt:" + p.ID, Label: PromptText(p), Children: children})
	}
	return it
}

func learnedMenu(st State) Item {
	it := Item{Key: "learned", Label: fmt.Sprintf("Learned (%d)", len(st.Learned)), Disabled: !st.Connected || len(st.Learned) == 0}
	var paths []string
	for i, l := range st.Learned {
		paths = append(paths, l.Path)
		if i >= MaxLearnedItems {
			continue
		}
		label := filepath.Base(l.Path)
		if len(l.Lineage) > 1 {
			label += " (" + strings.Join(l.Lineage, " → ") + ")"
		}
		children := []Item{{Key: "path", Label: l.Path + userSuffix(l.UID), Disabled: true}}
		if len(l.Dests) > 0 {
			children = append(children, Item{Key: "dests", Label: "to " + strings.Join(limit(l.Dests, 5), ", "), Disabled: true})
		}
		children = append(children,
			Item{Key: "allow", Label: "Allow", Action: Action{Kind: AdoptLearned, Paths: []string{l.Path}}},
			Item{Key: "deny", Label: "Deny", Action: Action{Kind: DenyApp, Path: l.Path, UID: l.UID}},
		)
		it.Children = append(it.Children, Item{Key: "learned:" + l.Path + userKey(l.UID), Label: label, Children: children})
	}
	if len(st.Learned) > MaxLearnedItems {
		it.Children = append(it.Children, more(len(st.Learned)-MaxLearnedItems))
	}
	if len(paths) > 0 {
		it.Children = append(it.Children, Item{Key: "adopt-all", Label: "Allow all learned", Action: Action{Kind: AdoptLearned, Paths: paths}})
	}
	return it
}

func appsMenu(st State) Item {
	it := Item{Key: "apps", Label: "Applications", Disabled: !st.Connected || len(st.Apps) == 0}
	for i, a := range st.Apps {
		if i == MaxAppItems {
			it.Children = append(it.Children, more(len(st.Apps)-i))
			break
		}
		mark, state := Green, ""
		if a.HashState != dbusapi.HashValid {
			mark, state = Red, ", "+string(a.HashState)
		}
		label := filepath.Base(a.Path) + " (" + string(a.Verdict) + state + ")"
		info := a.Path + userSuffix(a.UID)
		if a.Package != "" {
			info += " [" + a.Package + "]"
		}
		it.Children = append(it.Children, Item{Key: "app:" + a.Path + userKey(a.UID), Label: label, Mark: mark, Children: []Item{
			{Key: "path", Label: info, Disabled: true},
			{Key: "allow", Label: "Allow", Disabled: a.Verdict == dbusapi.Allow, Action: Action{Kind: AllowApp, Path: a.Path, UID: a.UID}},
			{Key: "deny", Label: "Deny", Disabled: a.Verdict == dbusapi.Deny, Action: Action{Kind: DenyApp, Path: a.Path, UID: a.UID}},
			{Key: "rehash", Label: "Rehash", Disabled: a.HashState != dbusapi.HashChanged, Action: Action{Kind: RehashApp, Path: a.Path}},
			{Key: "forget", Label: "Forget", Action: Action{Kind: ForgetApp, Path: a.Path, UID: a.UID}},
		}})
	}
	if len(st.Apps) > 0 {
		it.Children = append(it.Children, Item{Key: "rehash-all", Label: "Rehash all", Disabled: changedApps(st.Apps) == 0, Action: Action{Kind: RehashAll}})
	}
	return it
}

func recentMenu(st State) Item {
	it := Item{Key: "recent", Label: "Recent connections", Disabled: !st.Connected || len(st.Flows) == 0}
	flows := st.Flows
	if len(flows) > MaxRecentFlows {
		flows = flows[len(flows)-MaxRecentFlows:]
	}
	// Newest first.
	for i := len(flows) - 1; i >= 0; i-- {
		f := flows[i]
		label := fmt.Sprintf("%s → %s %s", filepath.Base(f.Exe), destination(f.Host, f.Addr, f.Port, f.Proto), verdictWord(f.Verdict))
		it.Children = append(it.Children, Item{Key: "flow:" + strconv.FormatUint(f.Cookie, 10) + ":" + f.Addr + ":" + strconv.Itoa(int(f.Port)),
			Label: label, Disabled: true})
	}
	return it
}

// PromptText says what a prompt asks, e.g. "curl wants to connect to
// example.com (93.184.216.34:443)".
func PromptText(p dbusapi.Prompt) string {
	return filepath.Base(p.Exe) + " wants to connect to " + destination(p.Host, p.Addr, p.Port, p.Proto)
}

// destination formats "host (addr:port)", or "addr:port" without a host;
// UDP is named.
func destination(host, addr string, port uint16, proto string) string {
	hp := addr + ":" + strconv.Itoa(int(port))
	if a, err := netip.ParseAddr(addr); err == nil {
		hp = netip.AddrPortFrom(a.Unmap(), port).String()
	}
	s := hp
	if host != "" && host != addr {
		s = host + " (" + hp + ")"
	}
	if proto == "udp" {
		s += " over UDP"
	}
	return s
}

func changedNote(p dbusapi.Prompt) string {
	if p.Note != "" {
		return "binary changed: " + p.Note
	}
	return "binary changed since it was allowed"
}

func verdictWord(v dbusapi.Verdict) string {
	switch v {
	case dbusapi.Allow:
		return "allowed"
	case dbusapi.Deny:
		return "denied"
	}
	return "held"
}

func changedApps(apps []dbusapi.App) int {
	n := 0
	for _, a := range apps {
		if a.HashState != dbusapi.HashValid {
			n++
		}
	}
	return n
}

func userSuffix(uid uint32) string {
	if uid == dbusapi.AnyUser {
		return " (all users)"
	}
	return " (uid " + strconv.FormatUint(uint64(uid), 10) + ")"
}

func userKey(uid uint32) string { return "#" + strconv.FormatUint(uint64(uid), 10) }

func more(n int) Item {
	return Item{Key: "more", Label: fmt.Sprintf("… %d more", n), Disabled: true}
}

func limit(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("%d more", len(s)-n))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
