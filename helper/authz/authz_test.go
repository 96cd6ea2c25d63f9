package authz_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(testbus.ChildEnv); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// runChild connects to the bus, optionally registers a polkit
// authentication agent (role "dismiss" or "hang"), prints its unique
// name and stays connected until stdin closes.
func runChild(role string) int {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch role {
	case "dismiss":
		err = testbus.RegisterPolkitAgent(conn, testbus.Dismiss)
	case "hang":
		err = testbus.RegisterPolkitAgent(conn, testbus.Hang)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(conn.Names()[0])
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// policyconfig is the strict shape of a polkit .policy file.
type policyconfig struct {
	XMLName   xml.Name `xml:"policyconfig"`
	Vendor    string   `xml:"vendor"`
	VendorURL string   `xml:"vendor_url"`
	IconName  string   `xml:"icon_name"`
	Actions   []struct {
		ID          string `xml:"id,attr"`
		Description string `xml:"description"`
		Message     string `xml:"message"`
		Defaults    struct {
			Any      string `xml:"allow_any"`
			Inactive string `xml:"allow_inactive"`
			Active   string `xml:"allow_active"`
		} `xml:"defaults"`
	} `xml:"action"`
}

// TestPolicyFile checks the installed action file against the design:
// every action Aegis checks is declared with a description, a message and
// the specified defaults, and no other action is declared.
func TestPolicyFile(t *testing.T) {
	b, err := os.ReadFile(testbus.ModuleFile(t, "polkit/io.github.aegisfw.aegis.policy"))
	if err != nil {
		t.Fatal(err)
	}
	var pc policyconfig
	d := xml.NewDecoder(strings.NewReader(string(b)))
	d.Strict = true
	if err := d.Decode(&pc); err != nil {
		t.Fatalf("parse policy: %v", err)
	}
	type defaults struct{ Any, Inactive, Active string }
	got := map[string]defaults{}
	for _, a := range pc.Actions {
		if a.Description == "" || a.Message == "" {
			t.Errorf("action %s: description or message missing", a.ID)
		}
		got[a.ID] = defaults{a.Defaults.Any, a.Defaults.Inactive, a.Defaults.Active}
	}
	admin := defaults{"auth_admin_keep", "auth_admin_keep", "auth_admin_keep"}
	want := map[string]defaults{
		authz.ActionAnswerPrompt: {"no", "no", "yes"},
		authz.ActionModifyRules:  admin,
		authz.ActionRehash:       admin,
		authz.ActionSetMode:      admin,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("actions and defaults (-want +got):\n%s", diff)
	}
	if len(authz.Actions()) != len(want) {
		t.Errorf("Actions() = %v, want the %d actions of the policy file", authz.Actions(), len(want))
	}
	for _, a := range authz.Actions() {
		if _, ok := want[a]; !ok {
			t.Errorf("Actions() has %s, which the policy file does not declare", a)
		}
	}
}

func startPolkit(t *testing.T) *testbus.Bus {
	return testbus.Start(t, testbus.Options{
		Polkit:        true,
		PolkitActions: []string{testbus.ModuleFile(t, "polkit/io.github.aegisfw.aegis.policy")},
		PolkitRules:   testbus.AegisRules,
	})
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestCheck asks the real polkitd about callers running as each test user
// and as root, for every action, with and without interaction.
//
// A dismissed dialog is produced for real: the caller registers a polkit
// authentication agent for its own process (testbus.RegisterPolkitAgent)
// that answers BeginAuthentication with
// org.freedesktop.PolicyKit1.Error.Cancelled, as a dialog's Cancel button
// does; polkitd then returns is_authorized=false with details
// polkit.dismissed=true, which Check reports as ErrCancelled. An agent
// that never answers, with the context cancelled, exercises
// CancelCheckAuthorization. Without interaction, AUTH_ADMIN is a challenge
// and Check reports ErrNotAuthorized.
func TestCheck(t *testing.T) {
	bus := startPolkit(t)
	exe := testbus.SharedExecutable(t, "")
	a := authz.New(bus.Conn(t), testLogger(t))
	ctx := context.Background()

	// caller starts a child as user with role and returns its bus name.
	caller := func(t *testing.T, user, role string) (string, *testbus.Child, testbus.User) {
		u := testbus.EnsureUser(t, user)
		c := bus.StartChild(t, u, exe, role)
		return c.Next(t, 20*time.Second), c, u
	}

	rootName := bus.Conn(t).Names()[0]
	for _, action := range authz.Actions() {
		if err := a.Check(ctx, rootName, action, false); err != nil {
			t.Errorf("Check(root, %s) = %v, want nil", action, err)
		}
	}

	tests := []struct {
		name        string
		user        string
		role        string
		interactive bool
		want        map[string]error // by action; nil means authorized
	}{
		{"rule says yes", testbus.UserAdmin, "plain", false, allActions(nil)},
		{"defaults: challenge without interaction, no for answer-prompt", testbus.UserPlain, "plain", false, allActions(authz.ErrNotAuthorized)},
		{"rule says no", testbus.UserRefused, "plain", false, allActions(authz.ErrNotAuthorized)},
		{"rule says no, even with interaction", testbus.UserRefused, "dismiss", true, allActions(authz.ErrNotAuthorized)},
		{"auth_admin without interaction is a challenge", testbus.UserChallenged, "plain", false, allActions(authz.ErrNotAuthorized)},
		{"auth_admin with a dismissed dialog", testbus.UserChallenged, "dismiss", true, allActions(authz.ErrCancelled)},
		{"desktop user answers its prompts only", testbus.UserDesktop, "plain", false, map[string]error{
			authz.ActionAnswerPrompt: nil,
			authz.ActionModifyRules:  authz.ErrNotAuthorized,
			authz.ActionRehash:       authz.ErrNotAuthorized,
			authz.ActionSetMode:      authz.ErrNotAuthorized,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, child, u := caller(t, tt.user, tt.role)
			for _, action := range authz.Actions() {
				err := a.Check(ctx, name, action, tt.interactive)
				if want := tt.want[action]; !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Errorf("Check(%s, %s, interactive=%v) = %v, want %v", tt.user, action, tt.interactive, err, want)
				}
			}
			uid, err := a.UnixUser(ctx, name)
			if err != nil || uid != u.UID {
				t.Errorf("UnixUser(%s) = %d, %v; want %d", name, uid, err, u.UID)
			}
			pid, err := a.ProcessID(ctx, name)
			if err != nil || int(pid) != child.PID() {
				t.Errorf("ProcessID(%s) = %d, %v; want %d", name, pid, err, child.PID())
			}
		})
	}

	t.Run("cancelled context cancels a pending dialog", func(t *testing.T) {
		name, _, _ := caller(t, testbus.UserChallenged, "hang")
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		err := a.Check(cctx, name, authz.ActionModifyRules, true)
		if !errors.Is(err, authz.ErrCancelled) {
			t.Errorf("Check with a hanging dialog and a cancelled context = %v, want ErrCancelled", err)
		}
	})

	t.Run("unknown bus name", func(t *testing.T) {
		err := a.Check(ctx, ":1.99999", authz.ActionModifyRules, false)
		if err == nil || errors.Is(err, authz.ErrNotAuthorized) || errors.Is(err, authz.ErrCancelled) {
			t.Errorf("Check(unknown name) = %v, want a lookup error", err)
		}
	})
}

func allActions(err error) map[string]error {
	m := map[string]error{}
	for _, a := range authz.Actions() {
		m[a] = err
	}
	return m
}

// BenchmarkCheck measures a polkit check of a non-root caller the rules
// allow, and reports it as a ratio to a bus round trip to the bus driver
// (the uid lookup that precedes it) measured in the same run.
func BenchmarkCheck(b *testing.B) {
	bus := testbus.Start(b, testbus.Options{
		Polkit:        true,
		PolkitActions: []string{testbus.ModuleFile(b, "polkit/io.github.aegisfw.aegis.policy")},
		PolkitRules:   testbus.AegisRules,
	})
	conn := bus.Conn(b)
	a := authz.New(conn, slog.New(slog.DiscardHandler))
	child := bus.StartChild(b, testbus.EnsureUser(b, testbus.UserAdmin), testbus.SharedExecutable(b, ""), "plain")
	name := child.Next(b, 20*time.Second)
	ctx := context.Background()

	const n = 200
	start := time.Now()
	for range n {
		if _, err := a.UnixUser(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
	baseline := time.Since(start) / n

	b.ResetTimer()
	for b.Loop() {
		if err := a.Check(ctx, name, authz.ActionModifyRules, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	perOp := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(baseline.Microseconds()), "baseline-µs")
	b.ReportMetric(float64(perOp)/float64(baseline), "x-baseline")
}
