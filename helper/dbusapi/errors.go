package dbusapi

import (
	"errors"

	"github.com/aegisfw/aegis/helper/authz"
	"github.com/godbus/dbus/v5"
)

// Named D-Bus errors of the API.
const (
	ErrorNotAuthorized   = BusName + ".Error.NotAuthorized"
	ErrorCancelled       = BusName + ".Error.Cancelled"
	ErrorInvalidArgument = BusName + ".Error.InvalidArgument"
	ErrorNotFound        = BusName + ".Error.NotFound"
	ErrorTampered        = BusName + ".Error.Tampered"
	// errorFailed is the bus's generic error, for anything else.
	errorFailed = "org.freedesktop.DBus.Error.Failed"
)

// Errors a Backend returns and a Client's caller branches on.
var (
	// ErrInvalidArgument: an argument is malformed or out of range.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no such app, learned app, prompt or agent.
	ErrNotFound = errors.New("not found")
	// ErrTampered: the rule file was tampered with.
	ErrTampered = errors.New("rules tampered with")
	// ErrNotAuthorized is authz.ErrNotAuthorized.
	ErrNotAuthorized = authz.ErrNotAuthorized
	// ErrCancelled is authz.ErrCancelled.
	ErrCancelled = authz.ErrCancelled
)

// namedErrors pairs each sentinel with its D-Bus name; the first match wins.
var namedErrors = []struct {
	err  error
	name string
}{
	{ErrInvalidArgument, ErrorInvalidArgument},
	{ErrCancelled, ErrorCancelled},
	{ErrNotAuthorized, ErrorNotAuthorized},
	{ErrNotFound, ErrorNotFound},
	{ErrTampered, ErrorTampered},
}

// toDBusError maps a Go error to the D-Bus error the caller receives. It
// is the only place where this mapping happens. Errors outside the API's
// named errors become org.freedesktop.DBus.Error.Failed.
func toDBusError(err error) *dbus.Error {
	if err == nil {
		return nil
	}
	for _, n := range namedErrors {
		if errors.Is(err, n.err) {
			return dbus.NewError(n.name, []any{err.Error()})
		}
	}
	return dbus.NewError(errorFailed, []any{err.Error()})
}

// RemoteError is a named error received from the helper. It matches the
// corresponding sentinel (ErrNotAuthorized, ErrNotFound, ...) with
// errors.Is.
type RemoteError struct {
	Name    string
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return e.Name
	}
	return e.Name + ": " + e.Message
}

// Is reports whether target is the sentinel for e's name.
func (e *RemoteError) Is(target error) bool {
	for _, n := range namedErrors {
		if n.name == e.Name && n.err == target {
			return true
		}
	}
	return false
}

// fromDBusError turns a D-Bus error reply into a *RemoteError, and leaves
// other errors alone.
func fromDBusError(err error) error {
	var dErr dbus.Error
	if !errors.As(err, &dErr) {
		return err
	}
	re := &RemoteError{Name: dErr.Name}
	if len(dErr.Body) > 0 {
		if s, ok := dErr.Body[0].(string); ok {
			re.Message = s
		}
	}
	return re
}
