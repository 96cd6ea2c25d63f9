package rules

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on values, chosen to catch mistakes rather than to constrain use.
const (
	MinPromptTimeout = time.Second
	MaxPromptTimeout = time.Hour
	maxStringLen     = 4096
)

// Validate checks s against the schema: the same checks Parse applies to
// a file, for sets built in code before they are encoded. The error is a
// *ParseError whose Field names the offending value.
func (s *Set) Validate() error {
	if s.Version > SchemaVersion {
		return &ParseError{Field: "version", Err: ErrNewerSchema,
			Msg: fmt.Sprintf("schema version %d is newer than this Aegis (%d)", s.Version, SchemaVersion)}
	}
	if s.Version < 0 {
		return &ParseError{Field: "version", Msg: fmt.Sprintf("schema version %d does not exist", s.Version)}
	}
	st := s.Settings
	switch st.Mode {
	case Enforce, Learning:
	default:
		return invalid("settings.mode", string(st.Mode), `"enforce" or "learning"`)
	}
	if st.PromptTimeout < MinPromptTimeout || st.PromptTimeout > MaxPromptTimeout {
		return &ParseError{Field: "settings.prompt_timeout",
			Msg: fmt.Sprintf("%v is outside the range %v to %v", st.PromptTimeout, MinPromptTimeout, MaxPromptTimeout)}
	}
	switch st.NoAgent {
	case NoAgentHold, NoAgentDeny:
	default:
		return invalid("settings.no_agent", string(st.NoAgent), `"hold" or "deny"`)
	}
	switch st.FailMode {
	case FailDeny, FailHold, FailAllow:
	default:
		return invalid("settings.fail_mode", string(st.FailMode), `"deny", "hold" or "allow"`)
	}

	type id struct {
		path string
		uid  uint32
	}
	seen := make(map[id]int, len(s.Apps))
	for i, a := range s.Apps {
		f := fmt.Sprintf("app[%d]", i)
		if err := a.validate(f); err != nil {
			return err
		}
		k := id{a.Path, a.UID}
		if j, dup := seen[k]; dup {
			return &ParseError{Field: f, Msg: fmt.Sprintf("duplicate of app[%d]: same path %q and user %s", j, a.Path, userString(a.UID))}
		}
		seen[k] = i
	}
	return nil
}

func invalid(field, got, want string) *ParseError {
	if got == "" {
		return &ParseError{Field: field, Msg: "missing; want " + want}
	}
	return &ParseError{Field: field, Msg: fmt.Sprintf("want %s, got %q", want, got)}
}

func userString(uid uint32) string {
	if uid == AnyUser {
		return `"any"`
	}
	return fmt.Sprintf("%d", uid)
}

func (a *App) validate(f string) error {
	if err := checkPath(a.Path); err != nil {
		return &ParseError{Field: f + ".path", Msg: err.Error()}
	}
	switch a.Verdict {
	case Allow, Deny:
	default:
		return invalid(f+".verdict", string(a.Verdict), `"allow" or "deny"`)
	}
	if a.SHA256 == "" {
		if a.Verdict != Deny {
			return &ParseError{Field: f + ".sha256", Msg: "missing; only a deny rule may leave out the hash"}
		}
	} else if err := checkSHA256(a.SHA256); err != nil {
		return &ParseError{Field: f + ".sha256", Msg: err.Error()}
	}
	if a.Parent != "" {
		if err := checkPath(a.Parent); err != nil {
			return &ParseError{Field: f + ".parent", Msg: err.Error()}
		}
	}
	if err := checkText(a.Package); err != nil {
		return &ParseError{Field: f + ".package", Msg: err.Error()}
	}
	for _, t := range []struct {
		key string
		t   time.Time
	}{{"first_seen", a.FirstSeen}, {"last_seen", a.LastSeen}} {
		if !t.t.IsZero() && (t.t.Year() < 1 || t.t.Year() > 9999) {
			return &ParseError{Field: f + "." + t.key, Msg: "year out of range 1-9999"}
		}
	}
	for j, d := range a.Dests {
		if err := d.validate(fmt.Sprintf("%s.dest[%d]", f, j)); err != nil {
			return err
		}
	}
	return nil
}

func (d *DestRule) validate(f string) error {
	if d.Prefix.IsValid() {
		if d.Host != "" {
			return &ParseError{Field: f, Msg: "has both addr and host; use one per rule"}
		}
		a := d.Prefix.Addr()
		switch {
		case a.Zone() != "":
			return &ParseError{Field: f + ".addr", Msg: "an address with a zone cannot be matched"}
		case a.Is4In6() && d.Prefix.Bits() >= 96:
			return &ParseError{Field: f + ".addr", Msg: "IPv4-mapped address must be written as IPv4"}
		case d.Prefix.Masked() != d.Prefix:
			return &ParseError{Field: f + ".addr", Msg: fmt.Sprintf("%s has bits set beyond its prefix length", d.Prefix)}
		}
	}
	if d.Host != "" {
		if err := checkHost(d.Host); err != nil {
			return &ParseError{Field: f + ".host", Msg: err.Error()}
		}
	}
	switch d.Proto {
	case ProtoAny, TCP, UDP:
	default:
		return invalid(f+".proto", string(d.Proto), `"tcp", "udp" or "any"`)
	}
	switch d.Verdict {
	case Allow, Deny:
	default:
		return invalid(f+".verdict", string(d.Verdict), `"allow" or "deny"`)
	}
	if !d.Prefix.IsValid() && d.Host == "" && d.Port == 0 && d.Proto == ProtoAny {
		return &ParseError{Field: f, Msg: "matches every destination; give addr, host, port or proto, or set the app's verdict instead"}
	}
	return nil
}

func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("missing")
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%q is not a clean path; write %q", p, filepath.Clean(p))
	}
	return checkText(p)
}

func checkText(s string) error {
	if len(s) > maxStringLen {
		return fmt.Errorf("longer than %d bytes", maxStringLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not valid UTF-8")
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		return fmt.Errorf("contains a control character at byte %d", i)
	}
	return nil
}

func checkSHA256(h string) error {
	if len(h) != 64 {
		return fmt.Errorf("want 64 hex digits, got %d characters", len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("want 64 lower-case hex digits, got %q at position %d", c, i+1)
		}
	}
	return nil
}

// checkHost accepts DNS names written in lower case: labels of letters,
// digits, '-' and '_', each 1-63 bytes, 253 bytes in all.
func checkHost(h string) error {
	if len(h) > 253 {
		return fmt.Errorf("hostname longer than 253 bytes")
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("%q is not a valid hostname", h)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
				return fmt.Errorf("%q is not a valid hostname (lower-case letters, digits, '-', '_' and dots)", h)
			}
		}
	}
	return nil
}
