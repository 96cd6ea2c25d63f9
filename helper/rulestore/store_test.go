package rulestore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/rules"
	"github.com/aegisfw/aegis/internal/testenv"
)

var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

// testEnv is a file-system layout like /etc/aegis and /var/lib/aegis
// under a temporary directory, owned by the user running the test.
type testEnv struct {
	rulesDir, rules, dropIns, state string
	cfg                             Config
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{
		rulesDir: filepath.Join(root, "etc", "aegis"),
		state:    filepath.Join(root, "var", "lib", "aegis"),
	}
	e.rules = filepath.Join(e.rulesDir, "rules.toml")
	e.dropIns = filepath.Join(e.rulesDir, "rules.d")
	e.cfg = Config{
		RulesFile: e.rules,
		DropInDir: e.dropIns,
		StateDir:  e.state,
		UID:       os.Geteuid(),
		GID:       os.Getegid(),
		Logger:    testLogger(t),
	}
	return e
}

// store returns a loaded store over e and fails on any error.
func (e *testEnv) store(t testing.TB) *Store {
	t.Helper()
	s := New(e.cfg)
	if _, err := s.Load(); err != nil {
		t.Fatalf("Load = %v", err)
	}
	return s
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// sampleSet returns a valid set of n apps; tag goes into every app's
// package field so that versions differ in content and size.
func sampleSet(n int, tag string) *rules.Set {
	s := rules.Default()
	for i := range n {
		s.Apps = append(s.Apps, rules.App{
			Path:      fmt.Sprintf("/usr/bin/app%d", i),
			SHA256:    hash,
			UID:       rules.AnyUser,
			Verdict:   rules.Allow,
			Package:   tag,
			FirstSeen: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
			Dests: []rules.DestRule{
				{Prefix: netip.MustParsePrefix("93.184.216.0/24"), Port: 443, Proto: rules.TCP, Verdict: rules.Deny},
				{Host: "example.com", Verdict: rules.Allow},
			},
		})
	}
	return s
}

func encode(t testing.TB, s *rules.Set) []byte {
	t.Helper()
	b, err := rules.Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

func withSourceT(s *rules.Set, name string) *rules.Set { return withSource(s, name) }

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func statOwner(t testing.TB, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

func TestWriteLoadRoundTrip(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.store(t)
	if diff := cmp.Diff(rules.Default(), s.Snapshot().Main, cmpOpts); diff != "" {
		t.Errorf("first start: Main mismatch (-want +got):\n%s", diff)
	}
	if got, want := readFile(t, e.rules), encode(t, rules.Default()); !bytes.Equal(got, want) {
		t.Errorf("first start wrote:\n%s\nwant:\n%s", got, want)
	}

	set := sampleSet(3, "v1")
	if err := s.Write(set); err != nil {
		t.Fatalf("Write = %v", err)
	}
	want := withSourceT(set, e.rules)
	if diff := cmp.Diff(want, s.Snapshot().Main, cmpOpts); diff != "" {
		t.Errorf("after Write: Main mismatch (-want +got):\n%s", diff)
	}
	if got := readFile(t, e.rules); !bytes.Equal(got, encode(t, set)) {
		t.Errorf("file holds:\n%s", got)
	}
	if got := readFile(t, filepath.Join(e.state, LastGoodName)); !bytes.Equal(got, encode(t, set)) {
		t.Errorf("last-good copy holds:\n%s", got)
	}

	// A second store, as after a restart, loads the same rules quietly.
	s2 := New(e.cfg)
	snap, err := s2.Load()
	if err != nil {
		t.Fatalf("Load after Write = %v", err)
	}
	if diff := cmp.Diff(want, snap.Main, cmpOpts); diff != "" {
		t.Errorf("reloaded Main mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, snap.Effective, cmpOpts); diff != "" {
		t.Errorf("reloaded Effective mismatch (-want +got):\n%s", diff)
	}
}

func TestWritePermissions(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.store(t)
	if err := s.Write(sampleSet(1, "v1")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want os.FileMode
	}{
		{e.rules, 0o600},
		{filepath.Join(e.state, SealName), 0o600},
		{filepath.Join(e.state, LastGoodName), 0o600},
		{e.rulesDir, os.ModeDir | 0o700},
		{e.state, os.ModeDir | 0o700},
	} {
		mode, uid, gid := statOwner(t, c.path)
		if mode != c.want || int(uid) != e.cfg.UID || int(gid) != e.cfg.GID {
			t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", c.path, mode, uid, gid, c.want, e.cfg.UID, e.cfg.GID)
		}
	}
	ents, _ := os.ReadDir(e.rulesDir)
	for _, ent := range ents {
		if strings.Contains(ent.Name(), tempInfix) {
			t.Errorf("temporary file %s left behind", ent.Name())
		}
	}
}

func TestWriteRefusesInvalidSet(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.store(t)
	good := sampleSet(1, "v1")
	if err := s.Write(good); err != nil {
		t.Fatal(err)
	}
	bad := sampleSet(1, "v2")
	bad.Apps[0].Path = "relative/path"
	var pe *rules.ParseError
	if err := s.Write(bad); !errors.As(err, &pe) || pe.Field != "app[0].path" {
		t.Fatalf("Write(invalid) = %v, want a *rules.ParseError on app[0].path", err)
	}
	if got := readFile(t, e.rules); !bytes.Equal(got, encode(t, good)) {
		t.Errorf("file changed by a refused write:\n%s", got)
	}
}

// TestLoadRefuses checks each way the file can be wrong at start: the
// store refuses it, keeps the refused content, restores the last good
// copy and says so.
func TestLoadRefuses(t *testing.T) {
	t.Parallel()
	huge := append([]byte("version = 1\n"), bytes.Repeat([]byte("# padding\n"), 1<<20)...)
	evil := encode(t, sampleSet(2, "evil"))
	defaults := encode(t, rules.Default())
	tests := []struct {
		name     string
		root     bool
		tamper   func(t *testing.T, e *testEnv)
		changes  Change
		rejected []byte // content expected in the rejected copy; nil for none
		link     bool   // the rejected "copy" is the refused symlink itself
		errIs    error
	}{
		{
			name:     "malformed TOML",
			tamper:   func(t *testing.T, e *testEnv) { writeForeign(t, e.rules, []byte("version = 1\n[settings\n")) },
			changes:  ChangeContent,
			rejected: []byte("version = 1\n[settings\n"),
			errIs:    ErrTampered,
		},
		{
			name: "valid but unsealed content",
			tamper: func(t *testing.T, e *testEnv) {
				writeForeign(t, e.rules, evil)
			},
			changes:  ChangeContent,
			rejected: evil,
			errIs:    ErrTampered,
		},
		{
			// The store's previous write, put back while it was stopped.
			name:     "previous version restored",
			tamper:   func(t *testing.T, e *testEnv) { writeForeign(t, e.rules, defaults) },
			changes:  ChangeContent,
			rejected: defaults,
			errIs:    ErrTampered,
		},
		{
			name: "10 MB file",
			tamper: func(t *testing.T, e *testEnv) {
				writeForeign(t, e.rules, huge)
			},
			changes:  ChangeContent,
			rejected: huge,
			errIs:    rules.ErrTooLarge,
		},
		{
			name:    "deleted",
			tamper:  func(t *testing.T, e *testEnv) { os.Remove(e.rules) },
			changes: ChangeDeleted,
			errIs:   ErrTampered,
		},
		{
			name: "symlinked rule file",
			tamper: func(t *testing.T, e *testEnv) {
				// Even a link to the sealed content is refused.
				other := filepath.Join(t.TempDir(), "rules.toml")
				writeForeign(t, other, readFile(t, e.rules))
				os.Remove(e.rules)
				if err := os.Symlink(other, e.rules); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeType,
			link:    true,
			errIs:   ErrTampered,
		},
		{
			name:    "world-readable file",
			tamper:  func(t *testing.T, e *testEnv) { os.Chmod(e.rules, 0o644) },
			changes: ChangeMode,
			errIs:   ErrTampered,
		},
		{
			name:    "world-writable directory",
			tamper:  func(t *testing.T, e *testEnv) { os.Chmod(e.rulesDir, 0o777) },
			changes: ChangeDirMode,
			errIs:   ErrTampered,
		},
		{
			name: "file owned by another user",
			root: true,
			tamper: func(t *testing.T, e *testEnv) {
				if err := os.Chown(e.rules, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeOwner,
			errIs:   ErrTampered,
		},
		{
			name: "directory owned by another user",
			root: true,
			tamper: func(t *testing.T, e *testEnv) {
				if err := os.Chown(e.rulesDir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeDirOwner,
			errIs:   ErrTampered,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.root {
				testenv.RequireRoot(t)
			}
			e := newTestEnv(t)
			good := sampleSet(2, "good")
			if err := e.store(t).Write(good); err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, e)

			s := New(e.cfg)
			snap, err := s.Load()
			if !errors.Is(err, ErrTampered) || !errors.Is(err, tt.errIs) {
				t.Fatalf("Load = %v, want ErrTampered and %v", err, tt.errIs)
			}
			var te *TamperError
			errors.As(err, &te)
			if te.Event.Changes != tt.changes {
				t.Errorf("Changes = %v, want %v", te.Event.Changes, tt.changes)
			}
			if snap == nil {
				t.Fatal("Load returned no snapshot with its TamperError")
			}
			if diff := cmp.Diff(withSourceT(good, e.rules), snap.Main, cmpOpts); diff != "" {
				t.Errorf("Main is not the last good set (-want +got):\n%s", diff)
			}
			checkRestored(t, e, encode(t, good))
			if tt.link {
				if fi, err := os.Lstat(te.Event.Rejected); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("rejected symlink %q: %v, %v", te.Event.Rejected, fi, err)
				}
			} else {
				checkRejected(t, e, te.Event.Rejected, tt.rejected)
			}
			// The next start is quiet.
			if _, err := New(e.cfg).Load(); err != nil {
				t.Errorf("Load after restore = %v", err)
			}
		})
	}
}

// writeForeign writes as another process would: in place, no seal.
func writeForeign(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkRestored checks that the rule file is the sealed content with the
// right type, mode and owner, in a directory with the right mode.
func checkRestored(t testing.TB, e *testEnv, want []byte) {
	t.Helper()
	mode, uid, gid := statOwner(t, e.rules)
	if mode != 0o600 || int(uid) != e.cfg.UID || int(gid) != e.cfg.GID {
		t.Errorf("restored file: mode %v owner %d:%d", mode, uid, gid)
	}
	if got := readFile(t, e.rules); !bytes.Equal(got, want) {
		t.Errorf("restored file holds:\n%.300s\nwant:\n%.300s", got, want)
	}
	if mode, uid, _ := statOwner(t, e.rulesDir); mode != os.ModeDir|0o700 || int(uid) != e.cfg.UID {
		t.Errorf("rule directory: mode %v owner %d", mode, uid)
	}
}

// checkRejected checks the rejected copy: present with content want and
// mode 0600, or absent when want is nil.
func checkRejected(t testing.TB, e *testEnv, path string, want []byte) {
	t.Helper()
	matches, _ := filepath.Glob(e.rules + ".rejected-*")
	if want == nil {
		if path != "" || len(matches) > 0 {
			t.Errorf("rejected copy %q (found %v), want none", path, matches)
		}
		return
	}
	if path == "" || !strings.HasPrefix(path, e.rules+".rejected-") {
		t.Fatalf("rejected copy at %q, want %s.rejected-<time>", path, e.rules)
	}
	if got := readFile(t, path); !bytes.Equal(got, want) {
		t.Errorf("rejected copy holds %d bytes, want the %d refused bytes", len(got), len(want))
	}
	if mode, _, _ := statOwner(t, path); mode != 0o600 {
		t.Errorf("rejected copy mode %v, want 0600", mode)
	}
}

func TestLoadFirstStartWithAdminFile(t *testing.T) {
	t.Parallel()
	set := sampleSet(2, "admin")
	tests := []struct {
		name     string
		data     []byte
		mode     os.FileMode
		accepted bool
	}{
		{"valid file with right mode is sealed", encode(t, set), 0o600, true},
		{"malformed file is refused", []byte("version = 1\n[[app]]\npath = 3\n"), 0o600, false},
		{"group-readable file is refused", encode(t, set), 0o640, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			if err := os.MkdirAll(e.rulesDir, 0o700); err != nil {
				t.Fatal(err)
			}
			writeForeign(t, e.rules, tt.data)
			if err := os.Chmod(e.rules, tt.mode); err != nil {
				t.Fatal(err)
			}
			snap, err := New(e.cfg).Load()
			if tt.accepted {
				if err != nil {
					t.Fatalf("Load = %v", err)
				}
				if diff := cmp.Diff(withSourceT(set, e.rules), snap.Main, cmpOpts); diff != "" {
					t.Errorf("Main mismatch (-want +got):\n%s", diff)
				}
				checkRestored(t, e, tt.data)
				if got := readFile(t, filepath.Join(e.state, LastGoodName)); !bytes.Equal(got, tt.data) {
					t.Errorf("file not sealed: last-good holds\n%s", got)
				}
				return
			}
			var te *TamperError
			if !errors.As(err, &te) {
				t.Fatalf("Load = %v, want a *TamperError", err)
			}
			if diff := cmp.Diff(rules.Default(), snap.Main, cmpOpts); diff != "" {
				t.Errorf("Main is not the default set (-want +got):\n%s", diff)
			}
			checkRestored(t, e, encode(t, rules.Default()))
			checkRejected(t, e, te.Event.Rejected, tt.data)
		})
	}
}

func TestLoadMalformedReportsParseError(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if err := e.store(t).Write(sampleSet(1, "good")); err != nil {
		t.Fatal(err)
	}
	writeForeign(t, e.rules, []byte("version = 1\n[settings]\nmode = \"paranoid\"\n"))
	_, err := New(e.cfg).Load()
	var pe *rules.ParseError
	if !errors.Is(err, ErrTampered) || !errors.As(err, &pe) {
		t.Fatalf("Load = %v, want ErrTampered and a *rules.ParseError", err)
	}
	if pe.Line != 3 || pe.Field != "settings.mode" {
		t.Errorf("ParseError = %v, want line 3, field settings.mode", pe)
	}
}

// TestLoadInterruptedWrite recreates the states a write killed between
// its steps leaves behind; none of them is tampering.
func TestLoadInterruptedWrite(t *testing.T) {
	t.Parallel()
	oldSet, newSet := sampleSet(1, "old"), sampleSet(2, "new")
	tests := []struct {
		name string
		// steps of the write that completed before the kill
		lastGood, seal bool
		want           *rules.Set
	}{
		{"killed after the last-good copy", true, false, oldSet},
		{"killed after the seal", true, true, newSet},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			s := e.store(t)
			if err := s.Write(oldSet); err != nil {
				t.Fatal(err)
			}
			newData := encode(t, newSet)
			if tt.lastGood {
				if err := writeAtomic(filepath.Join(e.state, LastGoodName), newData, e.cfg.UID, e.cfg.GID); err != nil {
					t.Fatal(err)
				}
			}
			if tt.seal {
				sl := seal{current: sha(newData), previous: sha(encode(t, oldSet)), hasPrevious: true}
				if err := writeAtomic(filepath.Join(e.state, SealName), sl.encode(), e.cfg.UID, e.cfg.GID); err != nil {
					t.Fatal(err)
				}
			}
			snap, err := New(e.cfg).Load()
			if err != nil {
				t.Fatalf("Load = %v", err)
			}
			if diff := cmp.Diff(withSourceT(tt.want, e.rules), snap.Main, cmpOpts); diff != "" {
				t.Errorf("Main mismatch (-want +got):\n%s", diff)
			}
			checkRestored(t, e, encode(t, tt.want))
			if _, err := New(e.cfg).Load(); err != nil {
				t.Errorf("second Load = %v", err)
			}
		})
	}
}

func TestDropIns(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	s := e.store(t)
	main := sampleSet(2, "main")
	if err := s.Write(main); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.dropIns, 0o755); err != nil {
		t.Fatal(err)
	}
	fleet := []byte(`version = 1
[[app]]
path = "/usr/bin/app1"
verdict = "deny"

[[app]]
path = "/usr/bin/ssh"
sha256 = "` + hash + `"
verdict = "allow"
`)
	for name, data := range map[string][]byte{
		"10-fleet.toml":    fleet,
		"20-broken.toml":   []byte("version = 1\n[[app]\n"),
		"30-settings.toml": []byte("version = 1\n[settings]\nmode = \"learning\"\n"),
		"40-loose.toml":    fleet,
		"notes.txt":        []byte("not a drop-in"),
	} {
		if err := os.WriteFile(filepath.Join(e.dropIns, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(e.dropIns, "40-loose.toml"), 0o666); err != nil {
		t.Fatal(err)
	}

	snap := s.ReloadDropIns()
	var skipped []string
	for _, err := range snap.Skipped {
		skipped = append(skipped, strings.SplitN(err.Error(), ":", 2)[0])
	}
	wantSkipped := []string{
		"drop-in " + filepath.Join(e.dropIns, "20-broken.toml"),
		"drop-in " + filepath.Join(e.dropIns, "30-settings.toml"),
		"drop-in " + filepath.Join(e.dropIns, "40-loose.toml"),
	}
	if diff := cmp.Diff(wantSkipped, skipped); diff != "" {
		t.Errorf("Skipped mismatch (-want +got):\n%s\nerrors: %v", diff, snap.Skipped)
	}
	var pe *rules.ParseError
	if !errors.As(snap.Skipped[0], &pe) || pe.Line == 0 || pe.File != filepath.Join(e.dropIns, "20-broken.toml") {
		t.Errorf("broken drop-in error = %v, want a *rules.ParseError naming file and line", snap.Skipped[0])
	}
	var got []string
	for _, a := range snap.Effective.Apps {
		got = append(got, fmt.Sprintf("%s %s %s", a.Path, a.Verdict, filepath.Base(a.Source)))
	}
	want := []string{
		"/usr/bin/app0 allow rules.toml",
		"/usr/bin/app1 deny 10-fleet.toml",
		"/usr/bin/ssh allow 10-fleet.toml",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Effective apps mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(withSourceT(main, e.rules), snap.Main, cmpOpts); diff != "" {
		t.Errorf("Main changed by drop-ins (-want +got):\n%s", diff)
	}
	if len(snap.Overrides) != 1 || snap.Overrides[0].Path != "/usr/bin/app1" {
		t.Errorf("Overrides = %+v, want one for /usr/bin/app1", snap.Overrides)
	}
}
