package rules

import (
	"bytes"
	"fmt"
	"strconv"
	"time"
)

// Encode validates s and writes it in the canonical form described in the
// package documentation, with version = SchemaVersion. The same set always
// encodes to the same bytes. Errors are *ParseError values from Validate.
//
// The encoder is written out by hand for the fixed schema rather than
// using reflection: it is an order of magnitude faster on large sets,
// which matters because every rule change rewrites the whole file.
func Encode(s *Set) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(256 + 320*len(s.Apps))
	b.WriteString("# Aegis rule file. Written by aegis-helper: edit with \"aegisctl rules edit\".\n")
	fmt.Fprintf(&b, "version = %d\n\n[settings]\n", SchemaVersion)
	kv(&b, "", "mode", string(s.Settings.Mode))
	kv(&b, "", "prompt_timeout", formatDuration(s.Settings.PromptTimeout))
	kv(&b, "", "no_agent", string(s.Settings.NoAgent))
	kv(&b, "", "fail_mode", string(s.Settings.FailMode))
	for _, a := range s.Apps {
		b.WriteString("\n[[app]]\n")
		kv(&b, "", "path", a.Path)
		if a.SHA256 != "" {
			kv(&b, "", "sha256", a.SHA256)
		}
		if a.UID == AnyUser {
			kv(&b, "", "user", "any")
		} else {
			b.WriteString("user = " + strconv.FormatUint(uint64(a.UID), 10) + "\n")
		}
		kv(&b, "", "verdict", string(a.Verdict))
		if a.Parent != "" {
			kv(&b, "", "parent", a.Parent)
		}
		if a.Package != "" {
			kv(&b, "", "package", a.Package)
		}
		if !a.FirstSeen.IsZero() {
			b.WriteString("first_seen = " + a.FirstSeen.UTC().Format(time.RFC3339Nano) + "\n")
		}
		if !a.LastSeen.IsZero() {
			b.WriteString("last_seen = " + a.LastSeen.UTC().Format(time.RFC3339Nano) + "\n")
		}
		for _, d := range a.Dests {
			b.WriteString("\n  [[app.dest]]\n")
			if d.Prefix.IsValid() {
				addr := d.Prefix.String()
				if d.Prefix.IsSingleIP() {
					addr = d.Prefix.Addr().String()
				}
				kv(&b, "  ", "addr", addr)
			}
			if d.Host != "" {
				kv(&b, "  ", "host", d.Host)
			}
			if d.Port != 0 {
				b.WriteString("  port = " + strconv.Itoa(int(d.Port)) + "\n")
			}
			if d.Proto != ProtoAny {
				kv(&b, "  ", "proto", string(d.Proto))
			}
			kv(&b, "  ", "verdict", string(d.Verdict))
		}
	}
	return b.Bytes(), nil
}

// kv writes one string-valued key as a TOML basic string.
func kv(b *bytes.Buffer, indent, key, val string) {
	b.WriteString(indent + key + " = ")
	quote(b, val)
	b.WriteByte('\n')
}

// quote writes s as a TOML basic string. Validate keeps control
// characters out of every string, but quote escapes them all the same.
func quote(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// formatDuration writes whole seconds as "60s" rather than "1m0s".
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
