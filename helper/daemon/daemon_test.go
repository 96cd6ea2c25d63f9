package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestBadConfig checks that a bad configuration is refused before
// anything is opened, with an error naming the problem.
func TestBadConfig(t *testing.T) {
	tmp := t.TempDir()
	good := Config{Cgroup: tmp, PinRoot: tmp, RulesFile: filepath.Join(tmp, "rules.toml"),
		DropInDir: filepath.Join(tmp, "rules.d"), StateDir: tmp, Logger: discard()}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no logger", func(c *Config) { c.Logger = nil }, "Logger is required"},
		{"relative rules file", func(c *Config) { c.RulesFile = "rules.toml" }, `rules file "rules.toml" is not an absolute path`},
		{"relative pin root", func(c *Config) { c.PinRoot = "pins" }, `pin root "pins" is not an absolute path`},
		{"relative state dir", func(c *Config) { c.StateDir = "." }, `state directory "." is not an absolute path`},
		{"negative timeout", func(c *Config) { c.PromptTimeout = -time.Second }, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.change(&cfg)
			err := Run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tt.want)
			}
			err = Uninstall(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Uninstall = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestUninstallNothingPinned checks that Uninstall with no pins does
// nothing and succeeds.
func TestUninstallNothingPinned(t *testing.T) {
	tmp := t.TempDir()
	if err := Uninstall(Config{Cgroup: tmp, PinRoot: tmp, Logger: discard()}); err != nil {
		t.Errorf("Uninstall with nothing pinned = %v, want nil", err)
	}
}

func TestNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := notify(sock, "READY=1"); err != nil {
		t.Fatalf("notify: %v", err)
	}
	buf := make([]byte, 64)
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Errorf("received %q, %v; want READY=1", buf[:n], err)
	}
	if err := notify("", "READY=1"); err != nil {
		t.Errorf("notify without a socket = %v, want nil", err)
	}
	if err := notify("relative", "READY=1"); err == nil {
		t.Error("notify to a relative socket name succeeded, want an error")
	}
	if err := notify(filepath.Join(t.TempDir(), "absent"), "READY=1"); err == nil {
		t.Error("notify to a missing socket succeeded, want an error")
	}
}
