package rules

import (
	"net/netip"
	"time"
)

// SchemaVersion is the rule file schema this package reads and writes.
const SchemaVersion = 1

// Verdict is what a rule decides for a connection.
type Verdict string

// Verdicts.
const (
	Allow Verdict = "allow"
	Deny  Verdict = "deny"
)

// Mode is the firewall's operating mode.
type Mode string

// Modes.
const (
	// Enforce holds connections of unknown apps and asks their user.
	Enforce Mode = "enforce"
	// Learning lets unknown apps connect and records them for review.
	Learning Mode = "learning"
)

// NoAgentPolicy says what happens to a held connection when no agent of
// the owning user is registered to be asked.
type NoAgentPolicy string

// No-agent policies.
const (
	// NoAgentHold keeps the connection held until the prompt times out.
	NoAgentHold NoAgentPolicy = "hold"
	// NoAgentDeny refuses the connection at once.
	NoAgentDeny NoAgentPolicy = "deny"
)

// FailMode says what the kernel does with unknown apps while no helper
// is running.
type FailMode string

// Fail modes.
const (
	FailDeny  FailMode = "deny"  // refuse with EPERM at once
	FailHold  FailMode = "hold"  // keep holding
	FailAllow FailMode = "allow" // let them through (never the default)
)

// Proto is a transport protocol a destination rule matches.
type Proto string

// Protocols; ProtoAny matches both.
const (
	ProtoAny Proto = ""
	TCP      Proto = "tcp"
	UDP      Proto = "udp"
)

// AnyUser is the UID value of a Scope that covers every user.
const AnyUser = ^uint32(0)

// Set is one complete, validated rule set.
type Set struct {
	// Version is the schema version the set was read with; Encode always
	// writes SchemaVersion.
	Version  int
	Settings Settings
	Apps     []App
}

// Settings are the global knobs kept in the rule file.
type Settings struct {
	Mode          Mode
	PromptTimeout time.Duration
	NoAgent       NoAgentPolicy
	FailMode      FailMode
}

// App is a trusted or refused executable.
type App struct {
	// Path is the absolute path of the executable.
	Path string
	// SHA256 is the lower-case hex digest the file must hash to. It may be
	// empty only on a Deny rule, which then matches the path whatever its
	// content.
	SHA256 string
	// UID is the user the rule applies to, or AnyUser.
	UID uint32
	// Verdict applies to destinations no DestRule matches.
	Verdict Verdict
	// Parent, when set, narrows the rule to processes launched by this
	// executable path.
	Parent string
	// Package is the distribution package that owns Path, if known.
	Package   string
	FirstSeen time.Time
	LastSeen  time.Time
	// Dests are per-destination exceptions, evaluated before Verdict.
	Dests []DestRule
	// Source is the name of the file the app was read from (the name given
	// to Parse). It is not written by Encode; after Merge it tells apps of
	// the main file from those of read-only drop-ins.
	Source string
}

// DestRule decides connections of one app to one destination.
type DestRule struct {
	// Prefix is an address or CIDR; the zero Prefix matches any address.
	Prefix netip.Prefix
	// Host is a hostname; connections to addresses it resolved to match.
	Host string
	// Port 0 matches any port.
	Port    uint16
	Proto   Proto
	Verdict Verdict
}
