package rules

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// cmpOpts compares sets: netip values by ==, times by Equal.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

const testHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseValid(t *testing.T) {
	t.Parallel()
	full := &Set{
		Version: 1,
		Settings: Settings{
			Mode:          Learning,
			PromptTimeout: 2 * time.Minute,
			NoAgent:       NoAgentDeny,
			FailMode:      FailHold,
		},
		Apps: []App{
			{
				Path:      "/usr/bin/curl",
				SHA256:    testHash,
				UID:       AnyUser,
				Verdict:   Allow,
				Parent:    "/usr/bin/bash",
				Package:   "curl",
				FirstSeen: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
				LastSeen:  time.Date(2026, 11, 25, 11, 30, 0, 0, time.UTC),
				Dests: []DestRule{
					{Prefix: netip.MustParsePrefix("93.184.216.0/24"), Port: 443, Proto: TCP, Verdict: Deny},
					{Host: "example.com", Verdict: Allow},
					{Prefix: netip.MustParsePrefix("2001:db8::/32"), Proto: UDP, Verdict: Deny},
					{Prefix: netip.MustParsePrefix("192.0.2.7/32"), Verdict: Deny},
				},
				Source: "valid/full.toml",
			},
			{Path: "/usr/bin/curl", SHA256: testHash, UID: 1000, Verdict: Deny, Source: "valid/full.toml"},
			{Path: "/usr/bin/telnet", UID: AnyUser, Verdict: Deny, Source: "valid/full.toml"},
		},
	}
	tests := []struct {
		name string
		want *Set
	}{
		{"valid/full.toml", full},
		{"valid/minimal.toml", Default()},
		{"valid/defaults.toml", Default()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.name, readFixture(t, tt.name))
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.name, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

// TestEncodeGolden pins the canonical encoding: a change to the written
// format shows up as a diff of testdata/valid/*.golden (rewrite with
// -update).
func TestEncodeGolden(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"full", "minimal"} {
		t.Run(name, func(t *testing.T) {
			s, err := Parse(name, readFixture(t, "valid/"+name+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Encode(s)
			if err != nil {
				t.Fatalf("Encode = %v", err)
			}
			golden := filepath.Join("testdata", "valid", name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := readFixture(t, "valid/"+name+".golden")
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("Encode mismatch (-want +got):\n%s", diff)
			}
			// Round trip: the encoding parses back to the same set and
			// encodes to the same bytes.
			back, err := Parse(name, got)
			if err != nil {
				t.Fatalf("Parse(Encode) = %v", err)
			}
			if diff := cmp.Diff(s, back, cmpOpts); diff != "" {
				t.Errorf("Parse(Encode(s)) mismatch (-want +got):\n%s", diff)
			}
			again, err := Encode(back)
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("second Encode differs (err %v):\n%s", err, again)
			}
		})
	}
}

func TestParseBad(t *testing.T) {
	t.Parallel()
	type want struct {
		Line  int
		Field string
	}
	tests := []struct {
		file string
		want want
		is   error
	}{
		{"malformed", want{3, ""}, nil},
		{"unterminated-string", want{3, "app.path"}, nil},
		{"unknown-top", want{2, "colour"}, nil},
		{"unknown-settings", want{4, "settings.mood"}, nil},
		{"unknown-app", want{6, "app.hash"}, nil},
		{"unknown-dest", want{8, "app.dest.ports"}, nil},
		{"key-case", want{2, "App"}, nil},
		{"missing-version", want{0, "version"}, nil},
		{"newer-version", want{1, "version"}, ErrNewerSchema},
		{"zero-version", want{1, "version"}, nil},
		{"version-string", want{1, "version"}, nil},
		{"settings-not-table", want{2, "settings"}, nil},
		{"app-not-table", want{2, "app"}, nil},
		{"mode-type", want{3, "settings.mode"}, nil},
		{"mode-invalid", want{3, "settings.mode"}, nil},
		{"timeout-negative", want{3, "settings.prompt_timeout"}, nil},
		{"timeout-absurd", want{3, "settings.prompt_timeout"}, nil},
		{"timeout-unitless", want{3, "settings.prompt_timeout"}, nil},
		{"timeout-int", want{3, "settings.prompt_timeout"}, nil},
		{"no-agent-invalid", want{3, "settings.no_agent"}, nil},
		{"fail-mode-invalid", want{3, "settings.fail_mode"}, nil},
		{"verdict-invalid", want{5, "app[0].verdict"}, nil},
		{"verdict-missing", want{2, "app[0].verdict"}, nil},
		{"path-relative", want{3, "app[0].path"}, nil},
		{"path-unclean", want{3, "app[0].path"}, nil},
		{"path-missing", want{2, "app[0].path"}, nil},
		{"parent-relative", want{6, "app[0].parent"}, nil},
		{"sha-short", want{4, "app[0].sha256"}, nil},
		{"sha-nonhex", want{4, "app[0].sha256"}, nil},
		{"sha-missing-allow", want{2, "app[0].sha256"}, nil},
		{"user-name", want{5, "app[0].user"}, nil},
		{"user-negative", want{5, "app[0].user"}, nil},
		{"date-local", want{6, "app[0].first_seen"}, nil},
		{"date-string", want{6, "app[0].last_seen"}, nil},
		{"duplicate-app", want{7, "app[1]"}, nil},
		{"cidr-bad", want{10, "app[0].dest[1].addr"}, nil},
		{"addr-garbage", want{10, "app[0].dest[1].addr"}, nil},
		{"cidr-host-bits", want{10, "app[0].dest[1].addr"}, nil},
		{"addr-and-host", want{9, "app[0].dest[1]"}, nil},
		{"host-invalid", want{10, "app[0].dest[1].host"}, nil},
		{"port-range", want{11, "app[0].dest[1].port"}, nil},
		{"port-zero", want{11, "app[0].dest[1].port"}, nil},
		{"port-string", want{11, "app[0].dest[1].port"}, nil},
		{"proto-invalid", want{11, "app[0].dest[1].proto"}, nil},
		{"dest-empty", want{9, "app[0].dest[1]"}, nil},
	}
	files, _ := filepath.Glob("testdata/bad/*.toml")
	if len(files) != len(tests) {
		t.Errorf("testdata/bad has %d files, table has %d cases", len(files), len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			name := "bad/" + tt.file + ".toml"
			s, err := Parse(name, readFixture(t, name))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) = %v, %v; want a *ParseError", name, s, err)
			}
			if pe.File != name || pe.Msg == "" {
				t.Errorf("Parse(%q) error names file %q with message %q", name, pe.File, pe.Msg)
			}
			if diff := cmp.Diff(tt.want, want{pe.Line, pe.Field}); diff != "" {
				t.Errorf("Parse(%q) = %v: position mismatch (-want +got):\n%s", name, err, diff)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Parse(%q) = %v, want an error matching %v", name, err, tt.is)
			}
		})
	}
}

func TestParseNewerVersionMessage(t *testing.T) {
	t.Parallel()
	_, err := Parse("rules.toml", readFixture(t, "bad/newer-version.toml"))
	want := "rules.toml:1: version: schema version 7 is newer than this Aegis (1)"
	if err == nil || err.Error() != want {
		t.Errorf("Parse = %v, want %q", err, want)
	}
}

func TestParseTooLarge(t *testing.T) {
	t.Parallel()
	// 10 MB of otherwise valid TOML: refused by size, before decoding.
	var b bytes.Buffer
	b.WriteString("version = 1\n")
	for b.Len() < 10<<20 {
		b.WriteString("# padding padding padding padding padding padding padding padding\n")
	}
	_, err := Parse("huge.toml", b.Bytes())
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Parse(10 MB) = %v, want ErrTooLarge", err)
	}
	var pe *ParseError
	if !errors.As(err, &pe) || pe.File != "huge.toml" {
		t.Errorf("Parse(10 MB) = %#v, want a *ParseError naming the file", err)
	}
	// Exactly MaxSize is still read.
	ok := append([]byte("version = 1\n"), bytes.Repeat([]byte("#"), MaxSize-12)...)
	if _, err := Parse("max.toml", ok); err != nil {
		t.Errorf("Parse(MaxSize bytes) = %v", err)
	}
}

func TestParseDropIn(t *testing.T) {
	t.Parallel()
	if _, err := ParseDropIn("dropin/fleet.toml", readFixture(t, "dropin/fleet.toml")); err != nil {
		t.Errorf("ParseDropIn(fleet) = %v", err)
	}
	_, err := ParseDropIn("dropin/settings.toml", readFixture(t, "dropin/settings.toml"))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Field != "settings" {
		t.Errorf("ParseDropIn(settings) = %v, want a *ParseError on field settings", err)
	}
}

func TestMerge(t *testing.T) {
	t.Parallel()
	main, err := Parse("rules.toml", readFixture(t, "valid/full.toml"))
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := ParseDropIn("10-fleet.toml", readFixture(t, "dropin/fleet.toml"))
	if err != nil {
		t.Fatal(err)
	}
	later := &Set{Version: 1, Apps: []App{
		{Path: "/usr/bin/ssh", UID: AnyUser, Verdict: Deny, Source: "20-later.toml"},
	}}
	mainBefore := main.Clone()

	got, overrides := Merge(main, fleet, later)

	wantApps := []App{
		main.Apps[0],
		// fleet's uid-1000 curl replaces the main file's in place.
		{Path: "/usr/bin/curl", SHA256: testHash, UID: 1000, Verdict: Allow, Source: "10-fleet.toml"},
		main.Apps[2],
		// ssh from fleet, then replaced by the later drop-in.
		{Path: "/usr/bin/ssh", UID: AnyUser, Verdict: Deny, Source: "20-later.toml"},
	}
	if diff := cmp.Diff(wantApps, got.Apps, cmpOpts); diff != "" {
		t.Errorf("Merge apps mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(main.Settings, got.Settings); diff != "" {
		t.Errorf("Merge settings mismatch (-want +got):\n%s", diff)
	}
	wantOverrides := []Override{
		{Path: "/usr/bin/curl", UID: 1000, Source: "10-fleet.toml", Replaced: "rules.toml"},
		{Path: "/usr/bin/ssh", UID: AnyUser, Source: "20-later.toml", Replaced: "10-fleet.toml"},
	}
	if diff := cmp.Diff(wantOverrides, overrides); diff != "" {
		t.Errorf("Merge overrides mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(mainBefore, main, cmpOpts); diff != "" {
		t.Errorf("Merge modified its input (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("merged set does not validate: %v", err)
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		edit  func(s *Set)
		field string
	}{
		{"zero settings", func(s *Set) { s.Settings = Settings{} }, "settings.mode"},
		{"relative path", func(s *Set) { s.Apps[0].Path = "curl" }, "app[0].path"},
		{"upper-case hash", func(s *Set) { s.Apps[0].SHA256 = strings.ToUpper(testHash) }, "app[0].sha256"},
		{"unmasked prefix", func(s *Set) {
			s.Apps[0].Dests = []DestRule{{Prefix: netip.MustParsePrefix("10.1.0.0/8"), Verdict: Deny}}
		}, "app[0].dest[0].addr"},
		{"newline in package", func(s *Set) { s.Apps[0].Package = "a\nversion = 2" }, "app[0].package"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Default()
			s.Apps = []App{{Path: "/usr/bin/curl", SHA256: testHash, UID: AnyUser, Verdict: Allow}}
			tt.edit(s)
			_, err := Encode(s)
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Field != tt.field {
				t.Errorf("Encode = %v, want a *ParseError on %s", err, tt.field)
			}
		})
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts
// survives Encode and Parse unchanged. The seed corpus is in
// testdata/fuzz/FuzzParse; the fixtures are added as seeds too.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"valid", "bad", "dropin"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.toml"))
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.toml", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error %T is not a *ParseError: %v", err, err)
			}
			return
		}
		enc, err := Encode(s)
		if err != nil {
			t.Fatalf("Encode(Parse(data)) = %v\ndata:\n%s", err, data)
		}
		back, err := Parse("fuzz.toml", enc)
		if err != nil {
			t.Fatalf("Parse(Encode(s)) = %v\nencoded:\n%s", err, enc)
		}
		if diff := cmp.Diff(s, back, cmpOpts); diff != "" {
			t.Fatalf("round trip mismatch (-want +got):\n%s\nencoded:\n%s", diff, enc)
		}
		again, err := Encode(back)
		if err != nil || !bytes.Equal(enc, again) {
			t.Fatalf("Encode is not stable (err %v):\n%s\n----\n%s", err, enc, again)
		}
	})
}
