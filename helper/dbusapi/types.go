package dbusapi

// Mode is the firewall's operating mode.
type Mode string

// Modes.
const (
	Enforce  Mode = "enforce"
	Learning Mode = "learning"
)

// Verdict is a decision about an app or a connection.
type Verdict string

// Verdicts.
const (
	Allow Verdict = "allow"
	Deny  Verdict = "deny"
)

// Scope is how long an answer to a prompt holds.
type Scope string

// Scopes.
const (
	// Once decides only the prompted connection.
	Once Scope = "once"
	// UntilQuit decides the prompted process until it exits.
	UntilQuit Scope = "until-quit"
	// Always writes a persistent rule for the process's user.
	Always Scope = "always"
	// AlwaysAllUsers writes a persistent rule for every user.
	AlwaysAllUsers Scope = "always-all-users"
)

// HashState is whether an app's file still matches its registered hash.
type HashState string

// Hash states.
const (
	HashValid   HashState = "valid"
	HashChanged HashState = "changed"
	HashMissing HashState = "missing"
)

// Status is the firewall's state at a glance. Wire type (sbuuuu).
type Status struct {
	Mode     Mode
	Tampered bool
	Apps     uint32
	Prompts  uint32
	Learned  uint32
	// Agents is filled in by the Server: the registered prompt agents.
	Agents uint32
}

// Counters are totals since the helper started. Wire type (tttttt).
type Counters struct {
	Allowed   uint64
	Denied    uint64
	Held      uint64
	TimedOut  uint64
	Tampering uint64
	RingDrops uint64
}

// App is a trusted or refused executable. Wire type (ssusssxx).
type App struct {
	Path      string
	SHA256    string
	UID       uint32 // AnyUser for every user
	Verdict   Verdict
	HashState HashState
	Package   string
	FirstSeen int64 // Unix seconds
	LastSeen  int64 // Unix seconds
}

// Rehashed is the outcome of re-registering an app's hash. Wire type (ssss).
type Rehashed struct {
	Path      string
	OldSHA256 string
	NewSHA256 string
	// Package owns the file and its recorded checksum matches the new
	// file; empty means the file was modified outside the package manager.
	Package string
}

// Learned is an app seen in learning mode. Wire type (suasasx).
type Learned struct {
	Path    string
	UID     uint32
	Lineage []string // outermost ancestor first
	Dests   []string
	// FirstSeen is in Unix seconds.
	FirstSeen int64
}

// Rule is one app rule as stored. Wire type (sssusa(ssqss)).
type Rule struct {
	Path    string
	SHA256  string
	Verdict Verdict
	UID     uint32
	Parent  string
	Dests   []DestRule
}

// DestRule is a per-destination exception of a Rule. Wire type (ssqss).
type DestRule struct {
	Prefix  string // address or CIDR; empty for any
	Host    string
	Port    uint16 // 0 for any
	Proto   string // tcp, udp or empty for both
	Verdict Verdict
}

// Prompt asks a user about a held connection. Wire type (suusasssqsbsx).
type Prompt struct {
	ID      string
	UID     uint32 // owner of the process
	PID     uint32
	Exe     string
	Lineage []string
	Host    string
	Addr    string
	Port    uint16
	Proto   string
	// Changed is set when the app is known but its binary changed;
	// Note then says whether a package update explains it.
	Changed bool
	Note    string
	Time    int64 // Unix seconds
}

// Flow is one connection in the flow table. Wire type (tuussqssssxtt).
type Flow struct {
	Cookie   uint64
	PID      uint32
	UID      uint32
	Exe      string
	Addr     string
	Port     uint16
	Host     string
	Proto    string
	Verdict  Verdict
	Reason   string // rule, prompt, learning or fail-mode
	Start    int64  // Unix seconds
	BytesIn  uint64
	BytesOut uint64
}

// Answer is a user's decision about a prompt.
type Answer struct {
	ID      string
	Verdict Verdict
	Scope   Scope
	// UID is the user who answered (from the bus).
	UID uint32
}
