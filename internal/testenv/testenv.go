// Package testenv lets tests that need root, a kernel feature or a tool
// skip with a reason on a developer machine and fail instead in CI, where
// AEGIS_TEST_STRICT=1 is set and every requirement must be met.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// StrictEnv is the environment variable that turns skips into failures.
const StrictEnv = "AEGIS_TEST_STRICT"

// Strict reports whether missing requirements must fail tests.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Skip skips t with reason, or fails it when strict mode is on.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("requirement not met under %s=1: %s", StrictEnv, reason)
	}
	t.Skip(reason)
}

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireTool skips t unless every named program is on PATH, and returns
// the path of the first.
func RequireTool(t testing.TB, names ...string) string {
	t.Helper()
	var first string
	for i, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			Skip(t, "needs "+n+" on PATH")
			return ""
		}
		if i == 0 {
			first = p
		}
	}
	return first
}
