package rules

import (
	"bytes"
	"fmt"
	"time"

	"github.com/BurntSushi/toml"
)

// Encoded shape: field order here is the key order in the file.
type outFile struct {
	Version  int         `toml:"version"`
	Settings outSettings `toml:"settings"`
	App      []outApp    `toml:"app,omitempty"`
}

type outSettings struct {
	Mode          string `toml:"mode"`
	PromptTimeout string `toml:"prompt_timeout"`
	NoAgent       string `toml:"no_agent"`
	FailMode      string `toml:"fail_mode"`
}

type outApp struct {
	Path      string     `toml:"path"`
	SHA256    string     `toml:"sha256,omitempty"`
	User      any        `toml:"user"`
	Verdict   string     `toml:"verdict"`
	Parent    string     `toml:"parent,omitempty"`
	Package   string     `toml:"package,omitempty"`
	FirstSeen *time.Time `toml:"first_seen,omitempty"`
	LastSeen  *time.Time `toml:"last_seen,omitempty"`
	Dest      []outDest  `toml:"dest,omitempty"`
}

type outDest struct {
	Addr    string  `toml:"addr,omitempty"`
	Host    string  `toml:"host,omitempty"`
	Port    *uint16 `toml:"port,omitempty"`
	Proto   string  `toml:"proto,omitempty"`
	Verdict string  `toml:"verdict"`
}

// Encode validates s and writes it in the canonical form described in the
// package documentation, with version = SchemaVersion. The same set always
// encodes to the same bytes. Errors are *ParseError values from Validate.
func Encode(s *Set) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	out := outFile{
		Version: SchemaVersion,
		Settings: outSettings{
			Mode:          string(s.Settings.Mode),
			PromptTimeout: formatDuration(s.Settings.PromptTimeout),
			NoAgent:       string(s.Settings.NoAgent),
			FailMode:      string(s.Settings.FailMode),
		},
	}
	for _, a := range s.Apps {
		o := outApp{
			Path:    a.Path,
			SHA256:  a.SHA256,
			User:    "any",
			Verdict: string(a.Verdict),
			Parent:  a.Parent,
			Package: a.Package,
		}
		if a.UID != AnyUser {
			o.User = int64(a.UID)
		}
		if !a.FirstSeen.IsZero() {
			t := a.FirstSeen.UTC()
			o.FirstSeen = &t
		}
		if !a.LastSeen.IsZero() {
			t := a.LastSeen.UTC()
			o.LastSeen = &t
		}
		for _, d := range a.Dests {
			od := outDest{Host: d.Host, Proto: string(d.Proto), Verdict: string(d.Verdict)}
			if d.Port != 0 {
				port := d.Port
				od.Port = &port
			}
			if d.Prefix.IsValid() {
				if d.Prefix.IsSingleIP() {
					od.Addr = d.Prefix.Addr().String()
				} else {
					od.Addr = d.Prefix.String()
				}
			}
			o.Dest = append(o.Dest, od)
		}
		out.App = append(out.App, o)
	}
	var buf bytes.Buffer
	buf.WriteString("# Aegis rule file. Written by aegis-helper: edit with \"aegisctl rules edit\".\n")
	if err := toml.NewEncoder(&buf).Encode(out); err != nil {
		return nil, &ParseError{Msg: fmt.Sprintf("encode: %v", err)}
	}
	return buf.Bytes(), nil
}

// formatDuration writes whole seconds as "60s" rather than "1m0s".
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
