package main

import (
	"testing"
)

func TestFlags(t *testing.T) {
	tmp := t.TempDir()
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"unknown flag", []string{"--bogus"}, 2},
		{"stray argument", []string{"start"}, 2},
		{"bad duration", []string{"--prompt-timeout", "soon"}, 2},
		{"bad log level", []string{"--log-level", "loud"}, 2},
		{"help", []string{"--help"}, 0},
		{"uninstall with nothing pinned", []string{"--uninstall", "--cgroup", tmp, "--pin-root", tmp}, 0},
		{"uninstall with a relative pin root", []string{"--uninstall", "--cgroup", tmp, "--pin-root", "pins"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(tt.args); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}
