// Package rulestore keeps Aegis's rule file on disk: it writes it
// atomically and seals it, refuses and reverses any change made behind the
// helper's back, and reads the read-only drop-ins beside it.
//
// # Files
//
// With the default Config:
//
//	/etc/aegis/              0700 root:root  (Config.RulesFile's directory)
//	  rules.toml             0600 root:root  the rule file; only the helper writes it
//	  rules.toml.rejected-*  0600            refused content, kept for review
//	  rules.d/*.toml                         read-only drop-ins (see below)
//	/var/lib/aegis/          0700 root:root  (Config.StateDir)
//	  rules.seal             SHA-256 of what the helper last wrote
//	  rules.last-good.toml   a copy of that content
//
// Every write is atomic (temporary file in the same directory, write,
// fsync, rename, fsync of the directory), so a crash or a kill -9 at any
// point leaves the old or the new version, never a mix. A write updates,
// in this order, the last-good copy, the seal (which then also names the
// previous content), the rule file, and the seal again (naming only the
// new content); Load recognises each interrupted state and completes or
// discards the write without calling it tampering.
//
// # Tampering
//
// The seal defines the good file: a regular file, mode 0600, owned by the
// configured owner (root), in a directory of mode 0700 with the same owner,
// whose SHA-256 equals the seal. Anything else is tampering: other content,
// deletion, a rename away, a symlink or other non-regular file in its
// place, a mode or owner change of the file or of its directory. The store
// then
//
//   - keeps the last good rules in memory (Snapshot does not change, so the
//     caller keeps enforcing them);
//   - moves the offending file aside as rules.toml.rejected-<time> (0600)
//     when its content differs, so nothing an administrator wrote is lost;
//   - puts the last good content back as a fresh file (a new inode, so a
//     descriptor opened while the mode was loose cannot write into it);
//   - reports an Event saying what changed.
//
// Load applies the same checks at start and returns a *TamperError
// (matching ErrTampered) next to a valid Snapshot; Watch applies them on
// every fsnotify event in the directory and calls the callback. The store's
// own writes never count as tampering, because the check compares with the
// seal under the writer's lock rather than guessing from timing.
//
// First start: with neither seal nor file, the store writes and seals the
// default rule set. With a file but no seal (a fresh install where an
// administrator wrote the file), the file is accepted and sealed if it
// parses and passes the permission check; otherwise it is refused as
// above and the default set is used.
//
// # Threat model
//
// Root can always defeat this: it can stop the helper, rewrite the seal
// and the last-good copy, or load its own eBPF programs. What the store
// gives is detection and reversal of edits made behind the helper's back
// (by a package script, a careless administrator, or malware that gained
// write access to /etc/aegis without controlling the helper), an alert
// that reaches every tray, and enforcement that stays on the last good
// rules meanwhile. The state directory is trusted as far as the rule
// directory is; a seal and copy that disagree are not trusted at all.
//
// # Drop-ins
//
// Files matching *.toml in Config.DropInDir are inputs the helper never
// writes, for fleet management. They are read at Load and by
// ReloadDropIns, in lexical order, with rules.ParseDropIn, and merged with
// rules.Merge (a later file replaces an earlier entry for the same path
// and user). A drop-in must be a regular file owned by the configured
// owner and not writable by group or others. A drop-in that fails these
// checks or does not parse is reported in Snapshot.Skipped and left out;
// it never stops the main rules from loading.
package rulestore
