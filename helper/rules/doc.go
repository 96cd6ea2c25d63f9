// Package rules is the model of Aegis's rule set (which executables are
// trusted or refused, for whom, and to which destinations) and its TOML
// encoding; it does no I/O beyond bytes in and bytes out, since
// helper/rulestore owns the file.
//
// # File format
//
// A rule file is TOML with a versioned schema. Version 1 looks like this:
//
//	version = 1                  # required; a newer version is refused
//
//	[settings]                   # optional; every key has a default
//	mode = "enforce"             # "enforce" (default) or "learning"
//	prompt_timeout = "60s"       # 1s to 1h; default 60s
//	no_agent = "hold"            # "hold" (default) or "deny"
//	fail_mode = "deny"           # "deny" (default), "hold" or "allow"
//
//	[[app]]
//	path = "/usr/bin/curl"       # required, absolute and clean
//	sha256 = "9f86d0...0f00a08"  # 64 hex digits; may be omitted on a deny rule
//	user = "any"                 # "any" (default) or a uid number
//	verdict = "allow"            # required: "allow" or "deny"
//	parent = "/usr/bin/bash"     # optional launcher constraint, absolute
//	package = "curl"             # optional owning package
//	first_seen = 2026-11-25T10:00:00Z   # optional, with a UTC offset
//	last_seen = 2026-11-25T10:00:00Z    # optional, with a UTC offset
//
//	  [[app.dest]]               # optional exceptions, checked in order
//	  addr = "93.184.216.0/24"   # address or CIDR (IPv4 or IPv6) ...
//	  port = 443                 # 1-65535; omitted = any port
//	  proto = "tcp"              # "tcp", "udp" or "any" (default)
//	  verdict = "deny"           # required
//
//	  [[app.dest]]
//	  host = "example.com"       # ... or a hostname, never both
//	  verdict = "allow"
//
// Unknown keys, wrong value types, and invalid values are errors: a rule
// file that does not say exactly what the reader understands is refused
// rather than half applied. Every error is a *ParseError naming the file,
// the line (and column, for TOML syntax errors) and the field, such as
// "rules.toml:14: app[1].sha256: want 64 hex digits, got 12 characters".
// Inputs larger than MaxSize are refused before they are decoded.
//
// An app is identified by its path and user; one file may not list the
// same pair twice. Addresses are stored as prefixes (a plain address is a
// /32 or /128); an IPv4-mapped IPv6 address is stored as IPv4, and a
// prefix with host bits set is refused.
//
// # Drop-ins
//
// Files in /etc/aegis/rules.d/*.toml are read-only inputs for fleet
// management, parsed with ParseDropIn: they follow the same schema but may
// hold only apps, not settings, because settings have a single owner (the
// main file, edited through the helper). Merge applies them over the main
// set in the order given (the store passes them in lexical order of their
// names). When two sources list the same path and user, the later source
// replaces the whole app entry (no field-by-field mixing), as later
// systemd drop-ins override earlier ones; Merge reports each replacement
// as an Override so the caller can log it.
//
// Encode writes a canonical form: deterministic, with fixed key order and
// defaults spelled out, so that Parse(Encode(s)) equals s and encoding
// twice gives the same bytes.
package rules
