package rulestore

import (
	"fmt"
	"strings"
	"time"

	"github.com/aegisfw/aegis/helper/rules"
)

// Change is a set of things found wrong with the rule file.
type Change uint16

// Changes.
const (
	// ChangeContent: the content differs from the seal.
	ChangeContent Change = 1 << iota
	// ChangeDeleted: the file was gone.
	ChangeDeleted
	// ChangeRenamed: the file was renamed away.
	ChangeRenamed
	// ChangeMode: the file's mode was not 0600.
	ChangeMode
	// ChangeOwner: the file's owner or group was not the configured one.
	ChangeOwner
	// ChangeType: a symlink, directory or other non-regular file was in
	// the file's place.
	ChangeType
	// ChangeDirMode: the rule directory's mode was not 0700.
	ChangeDirMode
	// ChangeDirOwner: the rule directory's owner was not the configured one.
	ChangeDirOwner
)

var changeNames = []string{"content", "deleted", "renamed", "mode", "owner", "type", "dir-mode", "dir-owner"}

// String lists the changes, such as "content|mode".
func (c Change) String() string {
	if c == 0 {
		return "none"
	}
	var parts []string
	for i, n := range changeNames {
		if c&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "|")
}

// Event reports one act of tampering and what the store did about it.
type Event struct {
	// Time is when the store noticed.
	Time time.Time
	// Path is the rule file.
	Path string
	// Changes says what was wrong.
	Changes Change
	// Rejected is the path the refused file was moved to, or empty when
	// there was nothing to keep (deletion, or only mode or owner changed).
	Rejected string
	// Detail adds facts such as a symlink's target.
	Detail string
	// Err is why the refused content does not parse (a *rules.ParseError),
	// when it does not; refused content that parses is refused all the
	// same, because it was not written by the helper.
	Err error
}

// TamperError is the error Load returns when it refused the rule file. It
// matches ErrTampered, and Event.Err when set.
type TamperError struct {
	Event Event
}

func (e *TamperError) Error() string {
	msg := fmt.Sprintf("%s: %v (%s)", e.Event.Path, ErrTampered, e.Event.Changes)
	if e.Event.Rejected != "" {
		msg += "; refused content kept as " + e.Event.Rejected
	}
	if e.Event.Detail != "" {
		msg += "; " + e.Event.Detail
	}
	if e.Event.Err != nil {
		msg += ": " + e.Event.Err.Error()
	}
	return msg
}

// Unwrap returns ErrTampered and the event's error, if any.
func (e *TamperError) Unwrap() []error {
	if e.Event.Err != nil {
		return []error{ErrTampered, e.Event.Err}
	}
	return []error{ErrTampered}
}

// changes maps an inspection to the Change bits it shows.
func (in *inspection) changes() Change {
	var c Change
	switch {
	case in.missing:
		return ChangeDeleted
	case in.symlink || in.irregular:
		return ChangeType
	}
	if in.modeBad {
		c |= ChangeMode
	}
	if in.ownerBad {
		c |= ChangeOwner
	}
	return c
}

// parseErr says why the inspected content is not a rule set, if it is not.
func (in *inspection) parseErr(name string) error {
	switch {
	case in.missing || in.symlink || in.irregular:
		return nil
	case in.tooLarge:
		return &rules.ParseError{File: name, Err: rules.ErrTooLarge,
			Msg: fmt.Sprintf("file is larger than the limit of %d bytes (4 MiB)", rules.MaxSize)}
	}
	_, err := rules.Parse(name, in.data)
	return err
}

func (s *Store) logTamper(ev Event) {
	args := []any{"path", ev.Path, "changes", ev.Changes.String()}
	if ev.Rejected != "" {
		args = append(args, "rejected", ev.Rejected)
	}
	if ev.Detail != "" {
		args = append(args, "detail", ev.Detail)
	}
	if ev.Err != nil {
		args = append(args, "err", ev.Err)
	}
	s.log.Warn("rule file tampered with: restored the last good rules", args...)
}
