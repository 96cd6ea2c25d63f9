package apps

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegisfw/aegis/helper/rules"
)

// changeDeadline is the latency the registry promises between a change of
// a registered file and its HashChanged event.
const changeDeadline = time.Second

// logWriter routes slog output to t.Log so it shows only on failure.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newRegistry builds a registry with an empty dpkg database unless cfg
// names one, and closes it when the test ends.
func newRegistry(t testing.TB, cfg Config, apps ...rules.App) *Registry {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.DpkgInfoDir == "" {
		cfg.DpkgInfoDir = filepath.Join(t.TempDir(), "no-dpkg")
	}
	r, err := New(cfg, apps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// writeExe writes an executable file and returns its SHA-256 in hex.
func writeExe(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return sumHex(content)
}

func sumHex(content string) string {
	s := sha256.Sum256([]byte(content))
	return hex.EncodeToString(s[:])
}

// copyFile copies src to dst with mode 0755 and returns dst's SHA-256.
func copyFile(t testing.TB, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func app(path, sum string) rules.App {
	return rules.App{Path: path, SHA256: sum, UID: rules.AnyUser, Verdict: rules.Allow}
}

// waitEvent reads r's events until one for path satisfies ok, failing t
// after changeDeadline.
func waitEvent(t testing.TB, r *Registry, path string, ok func(HashChanged) bool) HashChanged {
	t.Helper()
	deadline := time.NewTimer(changeDeadline)
	defer deadline.Stop()
	var seen []HashChanged
	for {
		select {
		case ev := <-r.Events():
			if ev.Path == path && ok(ev) {
				return ev
			}
			seen = append(seen, ev)
		case <-deadline.C:
			t.Fatalf("no matching HashChanged for %s within %v; saw %+v", path, changeDeadline, seen)
			return HashChanged{}
		}
	}
}

func openKey(t testing.TB, path string) (*os.File, Key) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	k, err := FileKey(f)
	if err != nil {
		t.Fatal(err)
	}
	return f, k
}
