package ctl

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/dbusapi"
)

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		name             string
		args             []string
		wantFlags, wantR []string
		wantErr          bool
	}{
		{"flags after the path", []string{"allow", "/usr/bin/curl", "--user", "1000", "--json"},
			[]string{"--user", "1000", "--json"}, []string{"allow", "/usr/bin/curl"}, false},
		{"value with equals", []string{"--bus=unix:path=/x", "status"}, []string{"--bus=unix:path=/x"}, []string{"status"}, false},
		{"double dash ends flags", []string{"forget", "--", "/-odd"}, nil, []string{"forget", "/-odd"}, false},
		{"unknown flag", []string{"status", "--bogus"}, nil, nil, true},
		{"missing value", []string{"answer", "x", "allow", "--scope"}, nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, rest, err := splitArgs(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("splitArgs(%q) error = %v, want error %v", tt.args, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.wantFlags, flags); diff != "" {
				t.Errorf("flags (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantR, rest); diff != "" {
				t.Errorf("rest (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUsageErrors checks that bad command lines are refused with exit
// code 2 and a message before any bus is contacted (the bus address
// points nowhere, so reaching it would give exit code 1).
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		msg  string
	}{
		{[]string{}, "usage: aegisctl"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"mode", "permissive"}, "want mode learning|enforce"},
		{[]string{"allow", "curl"}, `"curl" is not an absolute path`},
		{[]string{"allow", "/usr/bin/curl", "--user", "bob"}, `--user "bob": want a uid or any`},
		{[]string{"deny"}, "want one PATH"},
		{[]string{"rehash"}, "want rehash PATH or rehash --all"},
		{[]string{"rehash", "/bin/a", "--all"}, "want rehash PATH or rehash --all"},
		{[]string{"adopt"}, "want adopt PATH... or adopt --all"},
		{[]string{"answer", "p1", "maybe"}, `verdict "maybe": want allow or deny`},
		{[]string{"answer", "p1", "allow", "--scope", "forever"}, `--scope "forever"`},
		{[]string{"rules", "import"}, "want rules import FILE"},
		{[]string{"rules", "delete"}, `unknown rules command "delete"`},
		{[]string{"status", "extra"}, "want no arguments"},
		{[]string{"status", "--verbose"}, "unknown flag --verbose"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"--bus", "unix:path=/nonexistent/aegis-test"}, tt.args...)
			code := Run(context.Background(), IO{Out: &out, Err: &errb, UID: 1000}, args)
			if code != ExitUsage {
				t.Errorf("Run(%q) = %d, want %d; stderr: %s", tt.args, code, ExitUsage, errb.String())
			}
			if !strings.Contains(errb.String(), tt.msg) {
				t.Errorf("Run(%q) stderr = %q, want it to contain %q", tt.args, errb.String(), tt.msg)
			}
		})
	}
}

func TestUID(t *testing.T) {
	tests := []struct {
		user   string
		caller int
		want   uint32
	}{
		{"", 1000, 1000},
		{"", 0, dbusapi.AnyUser},
		{"any", 1000, dbusapi.AnyUser},
		{"0", 1000, 0},
		{"4242", 0, 4242},
	}
	for _, tt := range tests {
		c := &command{user: tt.user, io: IO{UID: tt.caller}}
		got, err := c.uid()
		if err != nil || got != tt.want {
			t.Errorf("uid(--user %q as %d) = %d, %v; want %d", tt.user, tt.caller, got, err, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := Run(context.Background(), IO{Out: &out, Err: &out}, []string{"help"}); code != ExitOK {
		t.Fatalf("help: exit %d", code)
	}
	for name := range commands {
		if !strings.Contains(out.String(), "  "+name+" ") {
			t.Errorf("usage does not mention %q", name)
		}
	}
}

func TestBusUnreachable(t *testing.T) {
	var out, errb bytes.Buffer
	code := Run(context.Background(), IO{Out: &out, Err: &errb}, []string{"--bus", "unix:path=/nonexistent/aegis-test", "status"})
	if code != ExitError || !strings.Contains(errb.String(), "connect to the bus") {
		t.Errorf("status with no bus = %d, %q; want %d and a connection error", code, errb.String(), ExitError)
	}
}
