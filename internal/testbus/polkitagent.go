package testbus

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/godbus/dbus/v5"
)

// AgentBehaviour is how a test polkit authentication agent handles an
// authentication request.
type AgentBehaviour int

const (
	// Dismiss answers at once as if the user closed the dialog
	// (org.freedesktop.PolicyKit1.Error.Cancelled).
	Dismiss AgentBehaviour = iota
	// Hang never answers until polkitd cancels the request.
	Hang
)

const polkitAgentPath = dbus.ObjectPath("/io/github/aegisfw/TestAuthenticationAgent")

// polkitAgent implements org.freedesktop.PolicyKit1.AuthenticationAgent.
type polkitAgent struct {
	behaviour AgentBehaviour
	mu        sync.Mutex
	pending   map[string]chan struct{}
}

func (a *polkitAgent) BeginAuthentication(actionID, message, iconName string, details map[string]string,
	cookie string, identities []struct {
		Kind    string
		Details map[string]dbus.Variant
	}) *dbus.Error {
	if a.behaviour == Hang {
		ch := make(chan struct{})
		a.mu.Lock()
		a.pending[cookie] = ch
		a.mu.Unlock()
		<-ch
	}
	return dbus.NewError("org.freedesktop.PolicyKit1.Error.Cancelled", []any{"dismissed by the test agent"})
}

func (a *polkitAgent) CancelAuthentication(cookie string) *dbus.Error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ch, ok := a.pending[cookie]; ok {
		close(ch)
		delete(a.pending, cookie)
	}
	return nil
}

// RegisterPolkitAgent exports a polkit authentication agent on conn and
// registers it with polkitd for the calling process (subject
// unix-process), so that polkitd asks it when a call from this process
// allows interactive authorization.
func RegisterPolkitAgent(conn *dbus.Conn, b AgentBehaviour) error {
	a := &polkitAgent{behaviour: b, pending: map[string]chan struct{}{}}
	if err := conn.Export(a, polkitAgentPath, "org.freedesktop.PolicyKit1.AuthenticationAgent"); err != nil {
		return fmt.Errorf("export polkit agent: %w", err)
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	subject := struct {
		Kind    string
		Details map[string]dbus.Variant
	}{"unix-process", map[string]dbus.Variant{
		"pid":        dbus.MakeVariant(uint32(os.Getpid())),
		"start-time": dbus.MakeVariant(start),
		"uid":        dbus.MakeVariant(int32(os.Getuid())),
	}}
	err = conn.Object("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority").
		Call("org.freedesktop.PolicyKit1.Authority.RegisterAuthenticationAgent", 0, subject, "C", string(polkitAgentPath)).Err
	if err != nil {
		return fmt.Errorf("register polkit agent: %w", err)
	}
	return nil
}

// procStartTime returns the start time of pid (field 22 of
// /proc/<pid>/stat, in clock ticks since boot).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain anything, ')' included: the
	// fields after it start after its last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: start time: %w", pid, err)
	}
	return v, nil
}
