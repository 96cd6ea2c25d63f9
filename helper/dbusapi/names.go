// Package dbusapi is aegis-helper's system D-Bus API: its wire names and
// types, the introspection XML, the Server that exports it with polkit
// checks, and the typed Client used by aegis-tray and aegisctl.
//
// The API reference is introspect.xml (the helper's object) and agent.xml
// (the prompt agent interface clients implement).
package dbusapi

import (
	_ "embed"
	"fmt"

	"github.com/godbus/dbus/v5"
)

// Wire names.
const (
	// BusName is the well-known name aegis-helper owns on the system bus.
	BusName = "io.github.aegisfw.Aegis1"
	// ObjectPath is the helper's only object.
	ObjectPath = dbus.ObjectPath("/io/github/aegisfw/Aegis1")

	FirewallInterface = BusName + ".Firewall"
	AppsInterface     = BusName + ".Apps"
	RulesInterface    = BusName + ".Rules"
	PromptsInterface  = BusName + ".Prompts"
	FlowsInterface    = BusName + ".Flows"
	// AgentInterface is implemented by prompt agents and called by the helper.
	AgentInterface = BusName + ".Agent"
)

// Interfaces lists the helper's own interfaces on ObjectPath.
func Interfaces() []string {
	return []string{FirewallInterface, AppsInterface, RulesInterface, PromptsInterface, FlowsInterface}
}

// IntrospectXML is the introspection data of ObjectPath, the source of
// truth for the API.
//
//go:embed introspect.xml
var IntrospectXML string

// AgentXML is the introspection data of a prompt agent's object.
//
//go:embed agent.xml
var AgentXML string

// Limits on arguments; larger ones are refused with InvalidArgument.
const (
	// MaxPathLen is the longest accepted executable path (PATH_MAX).
	MaxPathLen = 4096
	// MaxImportSize is the largest accepted rule file.
	MaxImportSize = 1 << 20
	// MaxIDLen is the longest accepted prompt id.
	MaxIDLen = 64
	// MaxAdopt is the most paths one AdoptLearned call accepts.
	MaxAdopt = 4096
)

// AnyUser is the uid argument of Allow, Deny and Forget for a rule that
// covers every user.
const AnyUser = ^uint32(0)

// Dial opens a private connection to the bus at addr, or to the system
// bus (DBUS_SYSTEM_BUS_ADDRESS or its standard socket) when addr is empty.
func Dial(addr string) (*dbus.Conn, error) {
	var (
		conn *dbus.Conn
		err  error
	)
	if addr != "" {
		conn, err = dbus.Connect(addr)
	} else {
		conn, err = dbus.ConnectSystemBus()
	}
	if err != nil {
		return nil, fmt.Errorf("connect to the bus: %w", err)
	}
	return conn, nil
}
