package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain runs main when re-executed by TestBadArguments.
func TestMain(m *testing.M) {
	if os.Getenv("AEGIS_TRAY_MAIN") != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestBadArguments checks that bad command lines exit 2 with a message
// before anything starts.
func TestBadArguments(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(self, tt.args...)
			cmd.Env = append(os.Environ(), "AEGIS_TRAY_MAIN=1", "DBUS_SESSION_BUS_ADDRESS=unix:path=/nonexistent", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent")
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit = %v, want 2; output: %s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("output %q does not mention %q", out, tt.want)
			}
		})
	}
}

// TestNoBus checks that a missing bus is a clear error and exit 1.
func TestNoBus(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-system-bus", "unix:path=/nonexistent/bus")
	cmd.Env = append(os.Environ(), "AEGIS_TRAY_MAIN=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want 1; output: %s", err, out)
	}
	if !strings.Contains(string(out), "connect to the system bus") {
		t.Errorf("output %q does not name the system bus", out)
	}
}
