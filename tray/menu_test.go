package tray

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/icons"
)

var (
	curlPrompt = dbusapi.Prompt{ID: "p1", UID: 1000, PID: 42, Exe: "/usr/bin/curl",
		Lineage: []string{"gnome-terminal", "bash", "curl"}, Host: "example.com", Addr: "93.184.216.34", Port: 443, Proto: "tcp"}
	validApp   = dbusapi.App{Path: "/usr/bin/curl", UID: 1000, Verdict: dbusapi.Allow, HashState: dbusapi.HashValid, Package: "curl"}
	changedApp = dbusapi.App{Path: "/usr/bin/wget", UID: dbusapi.AnyUser, Verdict: dbusapi.Allow, HashState: dbusapi.HashChanged}
	learnedApp = dbusapi.Learned{Path: "/usr/bin/git", UID: 1000, Lineage: []string{"bash", "git"}, Dests: []string{"140.82.121.3:443"}}
)

func TestIconState(t *testing.T) {
	tests := []struct {
		name string
		st   State
		want icons.State
	}{
		{"disconnected", State{}, icons.Disconnected},
		{"disconnected wins over tamper", State{Status: dbusapi.Status{Tampered: true}}, icons.Disconnected},
		{"enforcing", State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Enforce}}, icons.Enforcing},
		{"learning", State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Learning}}, icons.Learning},
		{"tampered", State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Learning, Tampered: true}}, icons.Alert},
		{"changed hash", State{Connected: true, Apps: []dbusapi.App{validApp, changedApp}}, icons.Alert},
		{"missing file", State{Connected: true, Apps: []dbusapi.App{{Path: "/x", HashState: dbusapi.HashMissing}}}, icons.Alert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IconState(tt.st); got != tt.want {
				t.Errorf("IconState = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStatusLine(t *testing.T) {
	tests := []struct {
		st   State
		want string
	}{
		{State{}, "Aegis: helper not running"},
		{State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Enforce}}, "Aegis: enforcing"},
		{State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Learning}}, "Aegis: learning"},
		{State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Enforce, Tampered: true},
			Apps: []dbusapi.App{changedApp}, Prompts: []dbusapi.Prompt{curlPrompt, curlPrompt}},
			"Aegis: enforcing (rules tampered with, 1 app changed, 2 pending)"},
	}
	for _, tt := range tests {
		if got := StatusLine(tt.st); got != tt.want {
			t.Errorf("StatusLine(%+v) = %q, want %q", tt.st, got, tt.want)
		}
	}
}

func TestPromptText(t *testing.T) {
	tests := []struct {
		name string
		p    dbusapi.Prompt
		want string
	}{
		{"host and address", curlPrompt, "curl wants to connect to example.com (93.184.216.34:443)"},
		{"address only", dbusapi.Prompt{Exe: "/bin/nc", Addr: "10.0.0.1", Port: 22}, "nc wants to connect to 10.0.0.1:22"},
		{"v4-mapped shown as IPv4", dbusapi.Prompt{Exe: "/bin/nc", Addr: "::ffff:10.0.0.1", Port: 22}, "nc wants to connect to 10.0.0.1:22"},
		{"IPv6 bracketed", dbusapi.Prompt{Exe: "/bin/nc", Host: "ip6.example", Addr: "2001:db8::1", Port: 80}, "nc wants to connect to ip6.example ([2001:db8::1]:80)"},
		{"UDP named", dbusapi.Prompt{Exe: "/usr/bin/dig", Addr: "9.9.9.9", Port: 53, Proto: "udp"}, "dig wants to connect to 9.9.9.9:53 over UDP"},
		{"unparsable address kept", dbusapi.Prompt{Exe: "x", Addr: "bogus", Port: 1}, "x wants to connect to bogus:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PromptText(tt.p); got != tt.want {
				t.Errorf("PromptText = %q, want %q", got, tt.want)
			}
		})
	}
}

// outline renders a menu as indented lines: label, then flags.
func outline(items []Item) []string {
	var out []string
	var walk func([]Item, string)
	walk = func(items []Item, indent string) {
		for _, it := range items {
			l := indent + it.Label
			if it.Separator {
				l = indent + "----"
			}
			if it.Checkable {
				l += map[bool]string{true: " [x]", false: " [ ]"}[it.Checked]
			}
			if it.Disabled {
				l += " (disabled)"
			}
			switch it.Mark {
			case Green:
				l += " {green}"
			case Red:
				l += " {red}"
			}
			out = append(out, l)
			walk(it.Children, indent+"  ")
		}
	}
	walk(items, "")
	return out
}

func TestBuildMenu(t *testing.T) {
	tests := []struct {
		name string
		st   State
		want []string
	}{
		{
			name: "disconnected",
			st:   State{},
			want: []string{
				"Aegis: helper not running (disabled)",
				"Learning mode [ ] (disabled)",
				"----",
				"Pending (0) (disabled)",
				"Learned (0) (disabled)",
				"Applications (disabled)",
				"Recent connections (disabled)",
				"----",
				"Quit",
			},
		},
		{
			name: "learning with everything",
			st: State{
				Connected: true,
				Status:    dbusapi.Status{Mode: dbusapi.Learning},
				Prompts:   []dbusapi.Prompt{curlPrompt, {ID: "p2", Exe: "/usr/bin/wget", Addr: "1.2.3.4", Port: 80, Changed: true, Note: "updated by package wget"}},
				Apps:      []dbusapi.App{validApp, changedApp},
				Learned:   []dbusapi.Learned{learnedApp},
				Flows: []dbusapi.Flow{
					{Cookie: 1, Exe: "/usr/bin/curl", Addr: "93.184.216.34", Port: 443, Host: "example.com", Verdict: dbusapi.Allow, Start: 1},
					{Cookie: 2, Exe: "/usr/bin/nc", Addr: "10.0.0.1", Port: 22, Verdict: dbusapi.Deny, Start: 2},
				},
			},
			want: []string{
				"Aegis: learning (1 app changed, 2 pending) (disabled)",
				"Learning mode [x]",
				"----",
				"Pending (2)",
				"  curl wants to connect to example.com (93.184.216.34:443)",
				"    gnome-terminal → bash → curl (disabled)",
				"    Allow once",
				"    Always allow",
				"    Deny",
				"  wget wants to connect to 1.2.3.4:80",
				"    binary changed: updated by package wget (disabled)",
				"    Allow once",
				"    Always allow",
				"    Deny",
				"Learned (1)",
				"  git (bash → git)",
				"    /usr/bin/git (uid 1000) (disabled)",
				"    to 140.82.121.3:443 (disabled)",
				"    Allow",
				"    Deny",
				"  Allow all learned",
				"Applications",
				"  curl (allow) {green}",
				"    /usr/bin/curl (uid 1000) [curl] (disabled)",
				"    Allow (disabled)",
				"    Deny",
				"    Rehash (disabled)",
				"    Forget",
				"  wget (allow, changed) {red}",
				"    /usr/bin/wget (all users) (disabled)",
				"    Allow (disabled)",
				"    Deny",
				"    Rehash",
				"    Forget",
				"  Rehash all",
				"Recent connections",
				"  nc → 10.0.0.1:22 denied (disabled)",
				"  curl → example.com (93.184.216.34:443) allowed (disabled)",
				"----",
				"Quit",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := outline(BuildMenu(tt.st))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("BuildMenu (-want +got):\n%s", diff)
			}
		})
	}
}

// find returns the item reached by following keys.
func find(t *testing.T, items []Item, keys ...string) Item {
	t.Helper()
	for i, k := range keys {
		found := false
		for _, it := range items {
			if it.Key == k {
				if i == len(keys)-1 {
					return it
				}
				items, found = it.Children, true
				break
			}
		}
		if !found {
			t.Fatalf("no item %q in path %q", k, keys)
		}
	}
	return Item{}
}

func TestBuildMenuActions(t *testing.T) {
	st := State{
		Connected: true,
		Status:    dbusapi.Status{Mode: dbusapi.Enforce},
		Prompts:   []dbusapi.Prompt{curlPrompt},
		Apps:      []dbusapi.App{validApp, changedApp},
		Learned:   []dbusapi.Learned{learnedApp, {Path: "/usr/bin/ssh", UID: 1000}},
	}
	menu := BuildMenu(st)
	tests := []struct {
		keys []string
		want Action
	}{
		{[]string{"mode"}, Action{Kind: SetMode, Mode: dbusapi.Learning}},
		{[]string{"pending", "prompt:p1", "once"}, Action{Kind: AnswerPrompt, PromptID: "p1", Verdict: dbusapi.Allow, Scope: dbusapi.Once}},
		{[]string{"pending", "prompt:p1", "always"}, Action{Kind: AnswerPrompt, PromptID: "p1", Verdict: dbusapi.Allow, Scope: dbusapi.Always}},
		{[]string{"pending", "prompt:p1", "deny"}, Action{Kind: AnswerPrompt, PromptID: "p1", Verdict: dbusapi.Deny, Scope: dbusapi.Once}},
		{[]string{"learned", "learned:/usr/bin/git#1000", "allow"}, Action{Kind: AdoptLearned, Paths: []string{"/usr/bin/git"}}},
		{[]string{"learned", "learned:/usr/bin/git#1000", "deny"}, Action{Kind: DenyApp, Path: "/usr/bin/git", UID: 1000}},
		{[]string{"learned", "adopt-all"}, Action{Kind: AdoptLearned, Paths: []string{"/usr/bin/git", "/usr/bin/ssh"}}},
		{[]string{"apps", "app:/usr/bin/wget#4294967295", "allow"}, Action{Kind: AllowApp, Path: "/usr/bin/wget", UID: dbusapi.AnyUser}},
		{[]string{"apps", "app:/usr/bin/wget#4294967295", "rehash"}, Action{Kind: RehashApp, Path: "/usr/bin/wget"}},
		{[]string{"apps", "app:/usr/bin/curl#1000", "forget"}, Action{Kind: ForgetApp, Path: "/usr/bin/curl", UID: 1000}},
		{[]string{"apps", "rehash-all"}, Action{Kind: RehashAll}},
		{[]string{"quit"}, Action{Kind: Quit}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.keys, "/"), func(t *testing.T) {
			if diff := cmp.Diff(tt.want, find(t, menu, tt.keys...).Action); diff != "" {
				t.Errorf("action (-want +got):\n%s", diff)
			}
		})
	}
	st.Status.Mode = dbusapi.Learning
	if got := find(t, BuildMenu(st), "mode").Action; got.Mode != dbusapi.Enforce {
		t.Errorf("learning: checkbox switches to %q, want %q", got.Mode, dbusapi.Enforce)
	}
}

// TestBuildMenuShape checks what the systray adapter relies on: the top
// level is the same in every state, keys are unique among siblings and no
// submenu holds a separator.
func TestBuildMenuShape(t *testing.T) {
	var many State
	many.Connected = true
	for i := range 120 {
		id := strings.Repeat("x", i%7) + string(rune('a'+i%26))
		many.Prompts = append(many.Prompts, dbusapi.Prompt{ID: id + "-" + string(rune('A'+i/26)), Exe: "/bin/a", Addr: "10.0.0.1", Port: uint16(i)})
		many.Apps = append(many.Apps, dbusapi.App{Path: "/bin/" + id + string(rune('A'+i/26)), HashState: dbusapi.HashValid})
		many.Learned = append(many.Learned, dbusapi.Learned{Path: "/bin/" + id + string(rune('A'+i/26))})
		many.Flows = append(many.Flows, dbusapi.Flow{Cookie: uint64(i), Exe: "/bin/a", Addr: "10.0.0.1", Port: uint16(i)})
	}
	for name, st := range map[string]State{"empty": {}, "connected": {Connected: true}, "many": many} {
		menu := BuildMenu(st)
		var keys []string
		for _, it := range menu {
			keys = append(keys, it.Key)
		}
		if diff := cmp.Diff(TopKeys(), keys); diff != "" {
			t.Errorf("%s: top-level keys (-want +got):\n%s", name, diff)
		}
		var check func([]Item, bool)
		check = func(items []Item, sub bool) {
			seen := map[string]bool{}
			for _, it := range items {
				if seen[it.Key] {
					t.Errorf("%s: duplicate key %q", name, it.Key)
				}
				seen[it.Key] = true
				if sub && it.Separator {
					t.Errorf("%s: separator %q in a submenu", name, it.Key)
				}
				check(it.Children, true)
			}
		}
		check(menu, false)
	}
	pending := find(t, BuildMenu(many), "pending")
	if n := len(pending.Children); n != MaxPendingItems+1 || pending.Children[n-1].Label != "… 100 more" {
		t.Errorf("pending: %d children, last %q; want %d and \"… 100 more\"", n, pending.Children[n-1].Label, MaxPendingItems+1)
	}
	if n := len(find(t, BuildMenu(many), "recent").Children); n != MaxRecentFlows {
		t.Errorf("recent: %d children, want %d", n, MaxRecentFlows)
	}
	adopt := find(t, BuildMenu(many), "learned", "adopt-all")
	if len(adopt.Action.Paths) != 120 {
		t.Errorf("Allow all learned adopts %d paths, want all 120", len(adopt.Action.Paths))
	}
}

// BenchmarkBuildMenu builds the menu of a busy state (the list limits
// reached) and reports its cost as a ratio to building the menu of an idle
// state, measured in the same run.
func BenchmarkBuildMenu(b *testing.B) {
	busy := State{Connected: true, Status: dbusapi.Status{Mode: dbusapi.Enforce}}
	for i := range 200 {
		p := curlPrompt
		p.ID = "p" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		busy.Prompts = append(busy.Prompts, p)
		a := validApp
		a.Path = "/usr/bin/app" + p.ID
		busy.Apps = append(busy.Apps, a)
		busy.Learned = append(busy.Learned, dbusapi.Learned{Path: a.Path, Lineage: []string{"bash", "app"}, Dests: []string{"10.0.0.1:443"}})
		busy.Flows = append(busy.Flows, dbusapi.Flow{Cookie: uint64(i), Exe: a.Path, Addr: "10.0.0.1", Port: 443, Verdict: dbusapi.Allow})
	}
	idle := State{Connected: true}
	const baseRuns = 20000
	b.StopTimer()
	t0 := time.Now()
	for range baseRuns {
		BuildMenu(idle)
	}
	base := float64(time.Since(t0)) / baseRuns
	b.StartTimer()
	for b.Loop() {
		BuildMenu(busy)
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/base, "x-idle")
}
