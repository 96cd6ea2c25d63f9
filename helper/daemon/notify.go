package daemon

import (
	"fmt"
	"net"
)

// notify sends state to systemd's notification socket, as sd_notify(3)
// does: one datagram on an AF_UNIX socket, whose name starts with @ for
// the abstract namespace. An empty socket means not started by systemd.
func notify(socket, state string) error {
	if socket == "" {
		return nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		return fmt.Errorf("notify: unsupported NOTIFY_SOCKET %q", socket)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}
