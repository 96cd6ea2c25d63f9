package dbusapi

import (
	"encoding/xml"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/google/go-cmp/cmp"
)

// signature renders a method as "Name(in)(out)" for comparison.
func signature(name string, args []introspect.Arg) string {
	var in, out strings.Builder
	for _, a := range args {
		if a.Direction == "out" {
			out.WriteString(a.Type)
		} else {
			in.WriteString(a.Type)
		}
	}
	return fmt.Sprintf("%s(%s)(%s)", name, in.String(), out.String())
}

func xmlInterfaces(t *testing.T, data string) map[string]introspect.Interface {
	t.Helper()
	var n introspect.Node
	if err := xml.Unmarshal([]byte(data), &n); err != nil {
		t.Fatalf("parse introspection XML: %v", err)
	}
	m := map[string]introspect.Interface{}
	for _, i := range n.Interfaces {
		m[i.Name] = i
	}
	return m
}

// TestIntrospectionMatchesExports checks, in both directions, that the
// methods the Server exports for each interface are exactly those that
// introspect.xml declares, with the same signatures; the same for the
// agent interface and agent.xml.
func TestIntrospectionMatchesExports(t *testing.T) {
	objs := map[string]any{
		FirewallInterface: &firewallObj{},
		AppsInterface:     &appsObj{},
		RulesInterface:    &rulesObj{},
		PromptsInterface:  &promptsObj{},
		FlowsInterface:    &flowsObj{},
	}
	check := func(xmlData string, objs map[string]any) {
		ifaces := xmlInterfaces(t, xmlData)
		for name, obj := range objs {
			iface, ok := ifaces[name]
			if !ok {
				t.Errorf("interface %s is exported but not in the XML", name)
				continue
			}
			var want, got []string
			for _, m := range iface.Methods {
				want = append(want, signature(m.Name, m.Args))
			}
			for _, m := range introspect.Methods(obj) {
				got = append(got, signature(m.Name, m.Args))
			}
			sort.Strings(want)
			sort.Strings(got)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s methods: XML (-want) vs exported (+got):\n%s", name, diff)
			}
		}
		for name := range ifaces {
			if _, ok := objs[name]; !ok && !strings.HasPrefix(name, "org.freedesktop.DBus.") {
				t.Errorf("interface %s is in the XML but not exported", name)
			}
		}
	}
	check(IntrospectXML, objs)
	check(AgentXML, map[string]any{AgentInterface: &agentObj{}})

	// Signals the Server emits and the Client decodes.
	ifaces := xmlInterfaces(t, IntrospectXML)
	var got []string
	for _, name := range Interfaces() {
		for _, s := range ifaces[name].Signals {
			var sig strings.Builder
			for _, a := range s.Args {
				sig.WriteString(a.Type)
			}
			got = append(got, name+"."+s.Name+"("+sig.String()+")")
		}
	}
	want := []string{
		FirewallInterface + ".ModeChanged(s)",
		AppsInterface + ".AppsChanged()",
		AppsInterface + ".HashChanged(ss)",
		RulesInterface + ".RulesChanged()",
		RulesInterface + ".Tampered(ss)",
		PromptsInterface + ".PromptRequested(su)",
		PromptsInterface + ".PromptResolved(ss)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("signals (-want +got):\n%s", diff)
	}
	for _, w := range want {
		name := w[:strings.IndexByte(w, '(')]
		sig := &dbus.Signal{Path: ObjectPath, Name: name, Body: sampleBody(w)}
		if ev, ok := decodeEvent(sig); !ok || ev.Kind != name[strings.LastIndexByte(name, '.')+1:] {
			t.Errorf("decodeEvent(%s) = %+v, %v", name, ev, ok)
		}
	}
	if p := ifaces[FirewallInterface].Properties; len(p) != 1 || p[0].Name != "Mode" || p[0].Type != "s" || p[0].Access != "read" {
		t.Errorf("Firewall properties = %+v, want Mode (s, read)", p)
	}
}

// sampleBody returns a body of the signature in w, e.g. "X.Y(su)".
func sampleBody(w string) []any {
	var body []any
	for _, c := range w[strings.IndexByte(w, '(')+1 : len(w)-1] {
		if c == 'u' {
			body = append(body, uint32(1))
		} else {
			body = append(body, "x")
		}
	}
	return body
}

// TestErrorMapping checks the one mapping from Go errors to D-Bus error
// names, and that a Client turns the names back into the sentinels.
func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err  error
		name string
	}{
		{fmt.Errorf("x: %w", ErrInvalidArgument), ErrorInvalidArgument},
		{fmt.Errorf("authorize: %w", authz.ErrNotAuthorized), ErrorNotAuthorized},
		{fmt.Errorf("authorize: %w", authz.ErrCancelled), ErrorCancelled},
		{fmt.Errorf("prompt: %w", ErrNotFound), ErrorNotFound},
		{fmt.Errorf("save: %w", ErrTampered), ErrorTampered},
		{errors.New("disk on fire"), errorFailed},
	}
	for _, tt := range tests {
		de := toDBusError(tt.err)
		if de.Name != tt.name {
			t.Errorf("toDBusError(%v) = %s, want %s", tt.err, de.Name, tt.name)
		}
		back := fromDBusError(*de)
		for _, n := range namedErrors {
			if got, want := errors.Is(back, n.err), n.name == tt.name; got != want {
				t.Errorf("errors.Is(fromDBusError(%s), %v) = %v, want %v", de.Name, n.err, got, want)
			}
		}
	}
	if toDBusError(nil) != nil {
		t.Error("toDBusError(nil) != nil")
	}
}

// TestValidate checks each validator's accepted and refused inputs.
func TestValidate(t *testing.T) {
	long := "/" + strings.Repeat("a", MaxPathLen)
	tests := []struct {
		name string
		err  error
	}{
		{"absolute path", validatePath("/usr/bin/curl")},
		{"root path", validatePath("/")},
		{"paths", validatePaths([]string{"/a", "/b"})},
		{"id", validateID("p-12_AB")},
		{"max id", validateID(strings.Repeat("a", MaxIDLen))},
		{"toml", validateTOML("version = 1\n")},
		{"toml at the limit", validateTOML(strings.Repeat("#", MaxImportSize))},
	}
	for _, tt := range tests {
		if tt.err != nil {
			t.Errorf("%s: %v, want nil", tt.name, tt.err)
		}
	}
	_, errMode := validateMode("permissive")
	_, errVerdict := validateVerdict("maybe")
	_, errScope := validateScope("forever")
	_, errEmptyScope := validateScope("")
	bad := []struct {
		name string
		err  error
	}{
		{"relative path", validatePath("usr/bin/curl")},
		{"empty path", validatePath("")},
		{"unclean path", validatePath("/usr/bin/../bin/curl")},
		{"trailing slash", validatePath("/usr/bin/")},
		{"long path", validatePath(long)},
		{"NUL in path", validatePath("/usr/bin/cu\x00rl")},
		{"no paths", validatePaths(nil)},
		{"one bad path", validatePaths([]string{"/a", "b"})},
		{"empty id", validateID("")},
		{"long id", validateID(strings.Repeat("a", MaxIDLen+1))},
		{"id with slash", validateID("a/b")},
		{"id with space", validateID("a b")},
		{"big toml", validateTOML(strings.Repeat("#", MaxImportSize+1))},
		{"non-UTF-8 toml", validateTOML("a = \"\xff\"")},
		{"mode", errMode},
		{"verdict", errVerdict},
		{"scope", errScope},
		{"empty scope", errEmptyScope},
	}
	for _, tt := range bad {
		if !errors.Is(tt.err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", tt.name, tt.err)
		}
	}
}
