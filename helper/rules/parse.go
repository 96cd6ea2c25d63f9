package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// The file's shape as the TOML decoder sees it. Leaves are untyped so that
// type errors can name the field and line in Aegis's own words; decoding
// into them still marks the keys as decoded, so MetaData.Undecoded lists
// exactly the unknown keys.
type rawFile struct {
	Version  any          `toml:"version"`
	Settings *rawSettings `toml:"settings"`
	App      []rawApp     `toml:"app"`
}

type rawSettings struct {
	Mode          any `toml:"mode"`
	PromptTimeout any `toml:"prompt_timeout"`
	NoAgent       any `toml:"no_agent"`
	FailMode      any `toml:"fail_mode"`
}

type rawApp struct {
	Path      any       `toml:"path"`
	SHA256    any       `toml:"sha256"`
	User      any       `toml:"user"`
	Verdict   any       `toml:"verdict"`
	Parent    any       `toml:"parent"`
	Package   any       `toml:"package"`
	FirstSeen any       `toml:"first_seen"`
	LastSeen  any       `toml:"last_seen"`
	Dest      []rawDest `toml:"dest"`
}

type rawDest struct {
	Addr    any `toml:"addr"`
	Host    any `toml:"host"`
	Port    any `toml:"port"`
	Proto   any `toml:"proto"`
	Verdict any `toml:"verdict"`
}

// knownKey reports whether k, as MetaData.Keys spells it, is in the schema.
func knownKey(k string) bool {
	switch k {
	case "version", "settings", "app", "app.dest",
		"settings.mode", "settings.prompt_timeout", "settings.no_agent", "settings.fail_mode",
		"app.path", "app.sha256", "app.user", "app.verdict", "app.parent",
		"app.package", "app.first_seen", "app.last_seen",
		"app.dest.addr", "app.dest.host", "app.dest.port", "app.dest.proto", "app.dest.verdict":
		return true
	}
	return false
}

// DefaultSettings returns the settings used for keys a file leaves out:
// enforce mode, a 60 s prompt timeout, hold when no agent is registered,
// and deny while no helper runs.
func DefaultSettings() Settings {
	return Settings{
		Mode:          Enforce,
		PromptTimeout: 60 * time.Second,
		NoAgent:       NoAgentHold,
		FailMode:      FailDeny,
	}
}

// Default returns an empty rule set with default settings.
func Default() *Set {
	return &Set{Version: SchemaVersion, Settings: DefaultSettings()}
}

// Parse decodes and validates a main rule file. name is used in errors
// and recorded as the Source of every app. Every error is a *ParseError;
// it matches ErrTooLarge when data is larger than MaxSize and
// ErrNewerSchema when the file's version is newer than SchemaVersion.
func Parse(name string, data []byte) (*Set, error) {
	return parse(name, data, false)
}

// ParseDropIn is Parse for a read-only drop-in file, which may hold apps
// but no [settings] table.
func ParseDropIn(name string, data []byte) (*Set, error) {
	return parse(name, data, true)
}

func parse(name string, data []byte, dropIn bool) (*Set, error) {
	if len(data) > MaxSize {
		return nil, &ParseError{File: name, Err: ErrTooLarge,
			Msg: fmt.Sprintf("file is %d bytes, larger than the limit of %d bytes (4 MiB)", len(data), MaxSize)}
	}
	var raw rawFile
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, decodeError(name, err)
	}
	p := &parser{name: name, data: data}
	// The decoder matches keys to fields without regard to case; the
	// schema's keys are lower case and exact.
	for _, k := range md.Keys() {
		if !knownKey(k.String()) {
			return nil, p.unknownKey(k)
		}
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return nil, p.unknownKey(undec[0])
	}
	if dropIn && md.IsDefined("settings") {
		return nil, p.errf("settings", "a drop-in may not hold settings; they belong in the main rule file")
	}
	s, err := p.build(&raw)
	if err != nil {
		return nil, err
	}
	for i := range s.Apps {
		s.Apps[i].Source = name
	}
	if err := s.Validate(); err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			pe.File = name
			pe.Line = locate(data, pe.Field)
		}
		return nil, err
	}
	return s, nil
}

// The TOML decoder reports type mismatches between the file and rawFile
// (say, "settings = 5") as plain errors of this form.
var decodeErrRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)

func decodeError(name string, err error) error {
	var te toml.ParseError
	if errors.As(err, &te) {
		return &ParseError{File: name, Line: te.Position.Line, Column: te.Position.Col,
			Field: te.LastKey, Msg: "malformed TOML: " + te.Message}
	}
	msg := err.Error()
	if m := decodeErrRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		msg := strings.TrimPrefix(m[3], "toml: ")
		switch m[2] {
		case "settings":
			msg = "want a table ([settings])"
		case "app", "app.dest":
			msg = "want an array of tables ([[" + m[2] + "]])"
		}
		return &ParseError{File: name, Line: line, Field: m[2], Msg: msg}
	}
	return &ParseError{File: name, Msg: strings.TrimPrefix(msg, "toml: ")}
}

type parser struct {
	name string
	data []byte
}

func (p *parser) errf(field, format string, args ...any) *ParseError {
	return &ParseError{File: p.name, Line: locate(p.data, field), Field: field, Msg: fmt.Sprintf(format, args...)}
}

// unknownKey reports a key the schema does not have. The decoder's keys
// carry no array index, so the line is that of the first table of the
// right kind holding such a key.
func (p *parser) unknownKey(k toml.Key) *ParseError {
	field := k.String()
	e := &ParseError{File: p.name, Field: field, Msg: "unknown key"}
	if len(k) > 0 {
		e.Line = locateKey(p.data, strings.Join(k[:len(k)-1], "."), -1, -1, k[len(k)-1])
	}
	return e
}

// typeName describes a decoded TOML value's type for error messages.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// str returns v as a string; v == nil means the key is absent.
func (p *parser) str(field string, v any) (string, bool, error) {
	if v == nil {
		return "", false, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", true, p.errf(field, "want a string, got %s", typeName(v))
	}
	return s, true, nil
}

func (p *parser) required(field string, v any) (string, error) {
	s, ok, err := p.str(field, v)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", p.errf(field, "missing")
	}
	return s, nil
}

func (p *parser) time(field string, v any) (time.Time, error) {
	if v == nil {
		return time.Time{}, nil
	}
	t, ok := v.(time.Time)
	if !ok {
		return time.Time{}, p.errf(field, "want a date-time such as 2026-11-25T10:00:00Z, got %s", typeName(v))
	}
	// The decoder marks values written without an offset with these zone
	// names; their meaning would depend on the machine's time zone.
	switch name, _ := t.Zone(); name {
	case "datetime-local", "date-local", "time-local":
		return time.Time{}, p.errf(field, "date-time needs a UTC offset, such as 2026-11-25T10:00:00Z")
	}
	return t.UTC(), nil
}

func (p *parser) build(raw *rawFile) (*Set, error) {
	s := &Set{Settings: DefaultSettings()}
	switch v := raw.Version.(type) {
	case nil:
		return nil, p.errf("version", "missing; the first line should be version = %d", SchemaVersion)
	case int64:
		if v > SchemaVersion {
			e := p.errf("version", "schema version %d is newer than this Aegis (%d)", v, SchemaVersion)
			e.Err = ErrNewerSchema
			return nil, e
		}
		if v < 1 {
			return nil, p.errf("version", "schema version %d does not exist; this Aegis reads version %d", v, SchemaVersion)
		}
		s.Version = int(v)
	default:
		return nil, p.errf("version", "want an integer, got %s", typeName(v))
	}

	if rs := raw.Settings; rs != nil {
		for _, f := range []struct {
			key string
			v   any
			dst *string
		}{
			{"mode", rs.Mode, (*string)(&s.Settings.Mode)},
			{"no_agent", rs.NoAgent, (*string)(&s.Settings.NoAgent)},
			{"fail_mode", rs.FailMode, (*string)(&s.Settings.FailMode)},
		} {
			v, ok, err := p.str("settings."+f.key, f.v)
			if err != nil {
				return nil, err
			}
			if ok {
				*f.dst = v
			}
		}
		switch v := rs.PromptTimeout.(type) {
		case nil:
		case string:
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, p.errf("settings.prompt_timeout", "want a duration such as \"60s\" or \"2m\", got %q", v)
			}
			s.Settings.PromptTimeout = d
		default:
			return nil, p.errf("settings.prompt_timeout", "want a duration string such as \"60s\", got %s", typeName(v))
		}
	}

	for i, ra := range raw.App {
		f := fmt.Sprintf("app[%d]", i)
		var a App
		var err error
		if a.Path, err = p.required(f+".path", ra.Path); err != nil {
			return nil, err
		}
		if a.SHA256, _, err = p.str(f+".sha256", ra.SHA256); err != nil {
			return nil, err
		}
		a.SHA256 = strings.ToLower(a.SHA256)
		var verdict string
		if verdict, err = p.required(f+".verdict", ra.Verdict); err != nil {
			return nil, err
		}
		a.Verdict = Verdict(verdict)
		if a.Parent, _, err = p.str(f+".parent", ra.Parent); err != nil {
			return nil, err
		}
		if a.Package, _, err = p.str(f+".package", ra.Package); err != nil {
			return nil, err
		}
		switch u := ra.User.(type) {
		case nil:
			a.UID = AnyUser
		case string:
			if u != "any" {
				return nil, p.errf(f+".user", "want \"any\" or a uid number, got %q", u)
			}
			a.UID = AnyUser
		case int64:
			if u < 0 || u >= int64(AnyUser) {
				return nil, p.errf(f+".user", "uid %d out of range 0-%d", u, AnyUser-1)
			}
			a.UID = uint32(u)
		default:
			return nil, p.errf(f+".user", "want \"any\" or a uid number, got %s", typeName(u))
		}
		if a.FirstSeen, err = p.time(f+".first_seen", ra.FirstSeen); err != nil {
			return nil, err
		}
		if a.LastSeen, err = p.time(f+".last_seen", ra.LastSeen); err != nil {
			return nil, err
		}
		for j, rd := range ra.Dest {
			d, err := p.dest(fmt.Sprintf("%s.dest[%d]", f, j), rd)
			if err != nil {
				return nil, err
			}
			a.Dests = append(a.Dests, d)
		}
		s.Apps = append(s.Apps, a)
	}
	return s, nil
}

func (p *parser) dest(f string, rd rawDest) (DestRule, error) {
	var d DestRule
	addr, hasAddr, err := p.str(f+".addr", rd.Addr)
	if err != nil {
		return d, err
	}
	if hasAddr {
		if d.Prefix, err = parsePrefix(addr); err != nil {
			return d, p.errf(f+".addr", "%v", err)
		}
	}
	host, hasHost, err := p.str(f+".host", rd.Host)
	if err != nil {
		return d, err
	}
	if hasHost {
		if d.Host = strings.ToLower(strings.TrimSuffix(host, ".")); d.Host == "" {
			return d, p.errf(f+".host", "empty hostname")
		}
	}
	switch v := rd.Port.(type) {
	case nil:
	case int64:
		if v < 1 || v > 65535 {
			return d, p.errf(f+".port", "port %d out of range 1-65535 (leave it out to match any port)", v)
		}
		d.Port = uint16(v)
	default:
		return d, p.errf(f+".port", "want an integer, got %s", typeName(v))
	}
	proto, _, err := p.str(f+".proto", rd.Proto)
	if err != nil {
		return d, err
	}
	switch proto {
	case "", "any":
		d.Proto = ProtoAny
	default:
		d.Proto = Proto(proto)
	}
	verdict, err := p.required(f+".verdict", rd.Verdict)
	if err != nil {
		return d, err
	}
	d.Verdict = Verdict(verdict)
	return d, nil
}

// parsePrefix reads an address or a CIDR prefix. A plain address becomes
// a full-length prefix; IPv4-mapped IPv6 becomes IPv4.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
		}
		if a.Zone() != "" {
			return p, fmt.Errorf("%q: an address with a zone cannot be matched", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	} else {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
		}
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		return p, fmt.Errorf("%q has bits set beyond its prefix length; did you mean %s?", s, m)
	}
	return p, nil
}
