// Package authz decides whether a caller on the system bus may perform an
// Aegis action, asking polkit about everyone but root.
package authz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/godbus/dbus/v5"
)

// polkit action IDs, as declared in polkit/io.github.aegisfw.aegis.policy.
const (
	// ActionAnswerPrompt answers a prompt about the caller's own process
	// once or until it quits.
	ActionAnswerPrompt = "io.github.aegisfw.aegis.answer-prompt"
	// ActionModifyRules changes persistent rules: "always" answers,
	// allow, deny, forget, adopting learned apps, rule import.
	ActionModifyRules = "io.github.aegisfw.aegis.modify-rules"
	// ActionRehash trusts the current file of one or all apps.
	ActionRehash = "io.github.aegisfw.aegis.rehash"
	// ActionSetMode switches between enforcing and learning.
	ActionSetMode = "io.github.aegisfw.aegis.set-mode"
)

// Actions lists every action ID Aegis checks.
func Actions() []string {
	return []string{ActionAnswerPrompt, ActionModifyRules, ActionRehash, ActionSetMode}
}

// Errors callers branch on.
var (
	// ErrNotAuthorized means polkit refused the action, or would only
	// allow it after an authentication the caller did not allow.
	ErrNotAuthorized = errors.New("not authorized")
	// ErrCancelled means the caller dismissed the authentication dialog
	// or the check was cancelled.
	ErrCancelled = errors.New("authentication cancelled")
)

// D-Bus names of the bus driver and polkit.
const (
	polkitName      = "org.freedesktop.PolicyKit1"
	polkitPath      = dbus.ObjectPath("/org/freedesktop/PolicyKit1/Authority")
	polkitAuthority = "org.freedesktop.PolicyKit1.Authority"
	// PolkitCancelledError is the error polkitd returns for a check
	// cancelled with CancelCheckAuthorization.
	PolkitCancelledError = "org.freedesktop.PolicyKit1.Error.Cancelled"
	// detailDismissed is set in the result details when the user
	// dismissed the authentication dialog.
	detailDismissed = "polkit.dismissed"
)

// cancelGrace bounds the wait for polkitd to answer a cancelled check.
const cancelGrace = 5 * time.Second

// checkAllowUserInteraction is polkit's CheckAuthorizationFlags bit.
const checkAllowUserInteraction = uint32(1)

// Authorizer answers authorization questions about bus callers. It is
// safe for concurrent use.
type Authorizer struct {
	conn *dbus.Conn
	log  *slog.Logger
}

// New returns an Authorizer that asks the bus driver and polkitd on conn,
// which must be the bus the callers use.
func New(conn *dbus.Conn, log *slog.Logger) *Authorizer {
	return &Authorizer{conn: conn, log: log.With("component", "authz")}
}

// subject is polkit's PolkitSubject on the wire: (sa{sv}).
type subject struct {
	Kind    string
	Details map[string]dbus.Variant
}

// result is polkit's PolkitAuthorizationResult on the wire: (bba{ss}).
type result struct {
	IsAuthorized bool
	IsChallenge  bool
	Details      map[string]string
}

// Check reports whether the caller with the unique bus name sender may
// perform action. Root is always allowed without asking polkit. Otherwise
// polkit decides about the subject system-bus-name {name: sender}; it may
// show an authentication dialog only when interactive is true. Check
// returns nil, an error matching ErrNotAuthorized or ErrCancelled, or
// another error when the bus or polkitd fails. Cancelling ctx cancels a
// pending polkit check.
func (a *Authorizer) Check(ctx context.Context, sender, action string, interactive bool) error {
	uid, err := a.UnixUser(ctx, sender)
	if err != nil {
		return fmt.Errorf("authorize %s: %w", action, err)
	}
	if uid == 0 {
		return nil
	}
	return a.checkPolkit(ctx, sender, action, interactive)
}

func (a *Authorizer) checkPolkit(ctx context.Context, sender, action string, interactive bool) error {
	subj := subject{Kind: "system-bus-name", Details: map[string]dbus.Variant{"name": dbus.MakeVariant(sender)}}
	var flags uint32
	if interactive {
		flags = checkAllowUserInteraction
	}
	cancelID, err := newCancelID()
	if err != nil {
		return fmt.Errorf("authorize %s: %w", action, err)
	}
	authority := a.conn.Object(polkitName, polkitPath)
	// The call itself is not bound to ctx: on cancellation polkitd is told
	// to cancel, and then answers the pending call with Error.Cancelled.
	call := authority.Go(polkitAuthority+".CheckAuthorization", 0, make(chan *dbus.Call, 1),
		subj, action, map[string]string{}, flags, cancelID)
	cancelled := false
	select {
	case <-call.Done:
	case <-ctx.Done():
		cancelled = true
		if err := authority.Call(polkitAuthority+".CancelCheckAuthorization", 0, cancelID).Err; err != nil {
			a.log.Debug("cancel polkit check", "sender", sender, "action", action, "err", err)
		}
		select {
		case <-call.Done:
		case <-time.After(cancelGrace):
			return fmt.Errorf("authorize %s: %w: %w", action, ErrCancelled, ctx.Err())
		}
	}
	var res result
	if err := call.Store(&res); err != nil {
		var dErr dbus.Error
		if errors.As(err, &dErr) && dErr.Name == PolkitCancelledError {
			return fmt.Errorf("authorize %s: %w", action, ErrCancelled)
		}
		return fmt.Errorf("authorize %s: polkit: %w", action, err)
	}
	a.log.Debug("polkit check", "sender", sender, "action", action, "interactive", interactive,
		"authorized", res.IsAuthorized, "challenge", res.IsChallenge, "details", res.Details)
	switch {
	case res.IsAuthorized:
		return nil
	case cancelled:
		// polkitd answers a cancelled check with a plain refusal.
		return fmt.Errorf("authorize %s: %w: %w", action, ErrCancelled, ctx.Err())
	case res.Details[detailDismissed] == "true":
		return fmt.Errorf("authorize %s: %w", action, ErrCancelled)
	case res.IsChallenge:
		return fmt.Errorf("authorize %s: %w (authentication required)", action, ErrNotAuthorized)
	default:
		return fmt.Errorf("authorize %s: %w", action, ErrNotAuthorized)
	}
}

// UnixUser returns the uid of the process that owns the bus name sender,
// as the bus daemon knows it.
func (a *Authorizer) UnixUser(ctx context.Context, sender string) (uint32, error) {
	var uid uint32
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, sender).Store(&uid)
	if err != nil {
		return 0, fmt.Errorf("uid of %s: %w", sender, err)
	}
	return uid, nil
}

// ProcessID returns the pid of the process that owns the bus name sender,
// as the bus daemon knows it.
func (a *Authorizer) ProcessID(ctx context.Context, sender string) (uint32, error) {
	var pid uint32
	err := a.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixProcessID", 0, sender).Store(&pid)
	if err != nil {
		return 0, fmt.Errorf("pid of %s: %w", sender, err)
	}
	return pid, nil
}

func newCancelID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("cancellation id: %w", err)
	}
	return "aegis-" + hex.EncodeToString(b[:]), nil
}
