package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"
)

// Authorizer answers who a bus caller is and whether it may perform a
// polkit action; *authz.Authorizer implements it.
type Authorizer interface {
	// Check returns nil, or an error matching ErrNotAuthorized or
	// ErrCancelled. Root is always allowed.
	Check(ctx context.Context, sender, action string, interactive bool) error
	UnixUser(ctx context.Context, sender string) (uint32, error)
	ProcessID(ctx context.Context, sender string) (uint32, error)
}

// Config configures a Server.
type Config struct {
	Backend    Backend
	Authorizer Authorizer
	// TrustedAgents are the executables (for example /usr/bin/aegis-tray
	// and /usr/bin/aegisctl) that may register as prompt agents and
	// answer prompts. They are hashed by NewServer; a process qualifies
	// when its running executable has one of these SHA-256 digests.
	// Paths that do not exist are skipped.
	TrustedAgents []string
	Logger        *slog.Logger
	// CallTimeout bounds a method call without interactive
	// authorization; default 25 s.
	CallTimeout time.Duration
	// InteractiveTimeout bounds a call that may show an authentication
	// dialog; default 5 min.
	InteractiveTimeout time.Duration
	// AgentTimeout bounds a call to a prompt agent; default 5 s.
	AgentTimeout time.Duration
	// ProcRoot is where the proc file system is mounted; default /proc.
	ProcRoot string
}

// DefaultTrustedAgents returns the installed agent executables that may
// register for prompts and answer them.
func DefaultTrustedAgents() []string {
	return []string{"/usr/bin/aegis-tray", "/usr/bin/aegisctl"}
}

// Server exports the API on a bus connection and forwards authorized
// calls to the Backend. It is safe for concurrent use.
type Server struct {
	conn    *dbus.Conn
	backend Backend
	authz   Authorizer
	log     *slog.Logger
	cfg     Config
	trusted map[string]string // SHA-256 hex -> path

	// base is cancelled by Close; every call derives its context from it.
	base   context.Context
	cancel context.CancelFunc

	props   *prop.Properties
	signals chan *dbus.Signal
	watchWG sync.WaitGroup

	mu        sync.Mutex
	agents    map[agentKey]agent
	delivered map[string][]agentKey // prompt id -> agents that were sent it
}

// NewServer returns a Server for conn. Call Start to export it.
func NewServer(conn *dbus.Conn, cfg Config) (*Server, error) {
	if cfg.Backend == nil || cfg.Authorizer == nil || cfg.Logger == nil {
		return nil, errors.New("new server: Backend, Authorizer and Logger are required")
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = 25 * time.Second
	}
	if cfg.InteractiveTimeout == 0 {
		cfg.InteractiveTimeout = 5 * time.Minute
	}
	if cfg.AgentTimeout == 0 {
		cfg.AgentTimeout = 5 * time.Second
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	s := &Server{
		conn:      conn,
		backend:   cfg.Backend,
		authz:     cfg.Authorizer,
		log:       cfg.Logger.With("component", "dbusapi"),
		cfg:       cfg,
		trusted:   map[string]string{},
		agents:    map[agentKey]agent{},
		delivered: map[string][]agentKey{},
	}
	for _, p := range cfg.TrustedAgents {
		sum, err := hashFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			s.log.Info("trusted agent not installed", "path", p)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("new server: trusted agent: %w", err)
		}
		s.trusted[sum] = p
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start exports the objects, starts watching for agents leaving the bus,
// and then requests BusName, so no call arrives before its handler
// exists. ctx bounds the start only.
func (s *Server) Start(ctx context.Context) error {
	st, err := s.backend.Status(ctx)
	if err != nil {
		return fmt.Errorf("start api: %w", err)
	}
	exports := []struct {
		v     any
		iface string
	}{
		{&firewallObj{s}, FirewallInterface},
		{&appsObj{s}, AppsInterface},
		{&rulesObj{s}, RulesInterface},
		{&promptsObj{s}, PromptsInterface},
		{&flowsObj{s}, FlowsInterface},
		{introspect.Introspectable(IntrospectXML), "org.freedesktop.DBus.Introspectable"},
	}
	for _, e := range exports {
		if err := s.conn.Export(e.v, ObjectPath, e.iface); err != nil {
			return fmt.Errorf("start api: export %s: %w", e.iface, err)
		}
	}
	s.props, err = prop.Export(s.conn, ObjectPath, prop.Map{
		FirewallInterface: {"Mode": {Value: string(st.Mode), Emit: prop.EmitTrue}},
	})
	if err != nil {
		return fmt.Errorf("start api: export properties: %w", err)
	}
	if err := s.watchAgents(ctx); err != nil {
		return fmt.Errorf("start api: %w", err)
	}
	reply, err := s.conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("start api: request name %s: %w", BusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("start api: name %s is already owned", BusName)
	}
	s.log.Info("serving", "name", BusName)
	return nil
}

// Close releases the name, removes the objects and stops the agent watch.
// It does not close the connection.
func (s *Server) Close() error {
	s.cancel()
	var errs []error
	if _, err := s.conn.ReleaseName(BusName); err != nil {
		errs = append(errs, fmt.Errorf("release name: %w", err))
	}
	for _, iface := range append(Interfaces(), "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Properties") {
		if err := s.conn.Export(nil, ObjectPath, iface); err != nil {
			errs = append(errs, fmt.Errorf("unexport %s: %w", iface, err))
		}
	}
	if s.signals != nil {
		s.conn.RemoveSignal(s.signals)
		s.watchWG.Wait()
	}
	return errors.Join(errs...)
}

// call is one incoming method call: its context and caller.
type call struct {
	ctx         context.Context
	sender      string
	interactive bool
}

// begin starts handling msg; the caller must call the returned cancel.
func (s *Server) begin(msg dbus.Message) (call, context.CancelFunc) {
	c := call{interactive: msg.Flags&dbus.FlagAllowInteractiveAuthorization != 0}
	if v, ok := msg.Headers[dbus.FieldSender]; ok {
		c.sender, _ = v.Value().(string)
	}
	timeout := s.cfg.CallTimeout
	if c.interactive {
		timeout = s.cfg.InteractiveTimeout
	}
	var cancel context.CancelFunc
	c.ctx, cancel = context.WithTimeout(s.base, timeout)
	return c, cancel
}

// authorize checks action for the caller of c (root: always allowed).
func (s *Server) authorize(c call, action string) error {
	err := s.authz.Check(c.ctx, c.sender, action, c.interactive)
	if err != nil {
		s.log.Info("refused", "sender", c.sender, "action", action, "err", err)
	}
	return err
}

// fail maps err to the D-Bus error returned to the caller, logging errors
// that are not part of the API's named errors.
func (s *Server) fail(c call, method string, err error) *dbus.Error {
	if err == nil {
		return nil
	}
	de := toDBusError(err)
	if de.Name == errorFailed {
		// A caller that left the bus during its call makes the uid, pid or
		// /proc lookups fail: nothing for an operator to act on.
		var has bool
		if s.conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, c.sender).Store(&has); !has {
			s.log.Debug("caller left during the call", "sender", c.sender, "method", method, "err", err)
		} else {
			s.log.Error("call failed", "sender", c.sender, "method", method, "err", err)
		}
	}
	return de
}

// visible reports whether a caller with uid may see data about owner
// (AnyUser counts as everyone's).
func visible(uid, owner uint32) bool {
	return uid == 0 || owner == uid || owner == AnyUser
}

// Signal emitters, called by the engine.

func (s *Server) emit(iface, member string, args ...any) error {
	if err := s.conn.Emit(ObjectPath, iface+"."+member, args...); err != nil {
		return fmt.Errorf("emit %s: %w", member, err)
	}
	return nil
}

// ModeChanged updates the Mode property and emits ModeChanged.
func (s *Server) ModeChanged(m Mode) error {
	if s.props != nil {
		// SetMust panics only for an unknown interface or property.
		s.props.SetMust(FirewallInterface, "Mode", string(m))
	}
	return s.emit(FirewallInterface, "ModeChanged", string(m))
}

// AppsChanged emits AppsChanged.
func (s *Server) AppsChanged() error { return s.emit(AppsInterface, "AppsChanged") }

// HashChanged emits HashChanged for the app at path.
func (s *Server) HashChanged(path string, state HashState) error {
	return s.emit(AppsInterface, "HashChanged", path, string(state))
}

// RulesChanged emits RulesChanged.
func (s *Server) RulesChanged() error { return s.emit(RulesInterface, "RulesChanged") }

// Tampered emits Tampered for the rule file at path whose rejected content
// was kept at rejectedCopy.
func (s *Server) Tampered(path, rejectedCopy string) error {
	return s.emit(RulesInterface, "Tampered", path, rejectedCopy)
}
