package apps

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/helper/rules"
)

func TestNewRejectsInvalidApps(t *testing.T) {
	t.Parallel()
	good := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		apps []rules.App
	}{
		{"relative path", []rules.App{app("usr/bin/curl", good)}},
		{"unclean path", []rules.App{app("/usr/bin/../bin/curl", good)}},
		{"empty path", []rules.App{app("", good)}},
		{"short digest", []rules.App{app("/usr/bin/curl", "abcd")}},
		{"upper-case digest", []rules.App{app("/usr/bin/curl", strings.ToUpper(good))}},
		{"non-hex digest", []rules.App{app("/usr/bin/curl", strings.Repeat("zz", 32))}},
		{"same path and user twice", []rules.App{app("/usr/bin/curl", good), app("/usr/bin/curl", good)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := New(Config{Logger: testLogger(t)}, tt.apps)
			if !errors.Is(err, ErrInvalidApp) {
				if r != nil {
					r.Close()
				}
				t.Fatalf("New(%+v) = %v, want ErrInvalidApp", tt.apps, err)
			}
			// Set refuses the first app the same way, leaving the registry as it was.
			r = newRegistry(t, Config{})
			if len(tt.apps) == 1 {
				if err := r.Set(tt.apps[0]); !errors.Is(err, ErrInvalidApp) {
					t.Errorf("Set(%+v) = %v, want ErrInvalidApp", tt.apps[0], err)
				}
			} else if err := r.Replace(tt.apps); !errors.Is(err, ErrInvalidApp) {
				t.Errorf("Replace(%+v) = %v, want ErrInvalidApp", tt.apps, err)
			}
			if got := r.Apps(); len(got) != 0 {
				t.Errorf("Apps() after a refused app = %+v, want none", got)
			}
		})
	}
}

func TestState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(t *testing.T, path string)
		want   State
	}{
		{"untouched", func(*testing.T, string) {}, Valid},
		{"rewritten", func(t *testing.T, p string) { writeExe(t, p, "something else\n") }, Changed},
		{"removed", func(t *testing.T, p string) { os.Remove(p) }, Missing},
		{"directory removed", func(t *testing.T, p string) { os.RemoveAll(filepath.Dir(p)) }, Missing},
		{"replaced by a directory", func(t *testing.T, p string) {
			os.Remove(p)
			os.Mkdir(p, 0o755)
		}, Changed},
		{"replaced by a FIFO", func(t *testing.T, p string) {
			os.Remove(p)
			if err := unix.Mkfifo(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, Changed},
		{"replaced by a symlink to another program", func(t *testing.T, p string) {
			os.Remove(p)
			if err := os.Symlink("/bin/sleep", p); err != nil {
				t.Fatal(err)
			}
		}, Changed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "bin", "true")
			sum := copyFile(t, "/bin/true", mkdirFor(t, path))
			r := newRegistry(t, Config{}, app(path, sum))
			if got, err := r.State(path); err != nil || got != Valid {
				t.Fatalf("State(%s) before change = %v, %v; want valid", path, got, err)
			}
			tt.change(t, path)
			got, err := r.State(path)
			if err != nil {
				t.Fatalf("State(%s): %v", path, err)
			}
			if got != tt.want {
				t.Errorf("State(%s) = %v, want %v", path, got, tt.want)
			}
			if as := r.Apps(); len(as) != 1 || as[0].State != tt.want {
				t.Errorf("Apps() = %+v, want one app in state %v", as, tt.want)
			}
		})
	}
}

func mkdirFor(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStateOfUnknownPath(t *testing.T) {
	t.Parallel()
	r := newRegistry(t, Config{})
	if _, err := r.State("/usr/bin/never-registered"); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("State(unknown) = %v, want ErrNotRegistered", err)
	}
}

func TestAppsPerUser(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "tool")
	sum := writeExe(t, path, "tool v2\n")
	old := sumHex("tool v1\n")
	alice := rules.App{Path: path, SHA256: old, UID: 1000, Verdict: rules.Allow}
	bob := rules.App{Path: path, SHA256: sum, UID: 1001, Verdict: rules.Deny}
	r := newRegistry(t, Config{}, bob, alice)

	k, err := statKey(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []AppState{
		{App: alice, State: Changed, SHA256: sum, Key: k},
		{App: bob, State: Valid, SHA256: sum, Key: k},
	}
	if diff := cmp.Diff(want, r.Apps()); diff != "" {
		t.Errorf("Apps() (-want +got):\n%s", diff)
	}
	if got, _ := r.State(path); got != Changed {
		t.Errorf("State(%s) with one stale app = %v, want changed", path, got)
	}

	// Set replaces the app of the same user; Remove drops one user's app.
	alice.SHA256 = sum
	if err := r.Set(alice); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.State(path); got != Valid {
		t.Errorf("State(%s) after Set = %v, want valid", path, got)
	}
	if !r.Remove(path, 1000) || r.Remove(path, 1000) {
		t.Errorf("Remove(%s, 1000) twice: want true then false", path)
	}
	if got := r.Apps(); len(got) != 1 || got[0].App.UID != 1001 {
		t.Errorf("Apps() after Remove = %+v, want bob's app only", got)
	}
	if !r.Remove(path, 1001) {
		t.Errorf("Remove(%s, 1001) = false", path)
	}
	if _, err := r.State(path); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("State after removing every app = %v, want ErrNotRegistered", err)
	}
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if len(r.watched) != 0 {
		t.Errorf("watched directories after removing every app = %v, want none", r.watched)
	}
}

func TestReplace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a", "x"), filepath.Join(dir, "b", "y")
	sa, sb := writeExe(t, a, "a\n"), writeExe(t, b, "b\n")
	r := newRegistry(t, Config{}, app(a, sa))
	if err := r.Replace([]rules.App{app(b, sb)}); err != nil {
		t.Fatal(err)
	}
	got := r.Apps()
	if len(got) != 1 || got[0].App.Path != b || got[0].State != Valid {
		t.Fatalf("Apps() after Replace = %+v, want %s valid", got, b)
	}
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if diff := cmp.Diff(map[string]bool{filepath.Dir(b): true}, r.watched); diff != "" {
		t.Errorf("watched directories (-want +got):\n%s", diff)
	}
}

// TestWatch changes a registered file the ways package managers, users and
// attackers do and expects the state to flip, with an event, within a
// second.
func TestWatch(t *testing.T) {
	t.Parallel()
	const orig, other = "original content\n", "replacement content\n"
	tests := []struct {
		name    string
		change  func(t *testing.T, path string)
		want    State
		content string // expected content digest; "" when missing
		newKey  bool
	}{
		{"rewrite in place", func(t *testing.T, p string) { writeExe(t, p, other) }, Changed, other, true},
		{"replace by rename", func(t *testing.T, p string) { renameOver(t, p, other) }, Changed, other, true},
		{"reinstall same content by rename", func(t *testing.T, p string) { renameOver(t, p, orig) }, Valid, orig, true},
		{"chmod", func(t *testing.T, p string) {
			if err := os.Chmod(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, Valid, orig, true},
		{"delete", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, Missing, "", true},
		{"rename away", func(t *testing.T, p string) {
			if err := os.Rename(p, p+".old"); err != nil {
				t.Fatal(err)
			}
		}, Missing, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "app")
			sum := writeExe(t, path, orig)
			r := newRegistry(t, Config{}, app(path, sum))
			before := r.Apps()[0].Key

			tt.change(t, path)
			wantSum := ""
			if tt.content != "" {
				wantSum = sumHex(tt.content)
			}
			ev := waitEvent(t, r, path, func(ev HashChanged) bool { return ev.New == tt.want && ev.SHA256 == wantSum })
			if ev.Old != Valid || ev.OldKey != before {
				t.Errorf("event %+v: want Old valid and OldKey %+v", ev, before)
			}
			if tt.newKey == (ev.Key == before) {
				t.Errorf("event %+v: key changed = %v, want %v", ev, ev.Key != before, tt.newKey)
			}
			if got := r.Apps()[0]; got.State != tt.want || got.SHA256 != wantSum {
				t.Errorf("Apps()[0] = %+v, want state %v sha256 %q", got, tt.want, wantSum)
			}

			// Putting the original back makes it valid again.
			if tt.want != Valid {
				renameOver(t, path, orig)
				waitEvent(t, r, path, func(ev HashChanged) bool { return ev.New == Valid })
			}
		})
	}
}

// renameOver replaces path the way dpkg does: write a temporary file in
// the same directory, then rename it over path.
func renameOver(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".dpkg-new"
	writeExe(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestWatchUnrelatedFile checks that a change to an unregistered file in
// a watched directory hashes nothing and emits nothing.
func TestWatchUnrelatedFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "app")
	r := newRegistry(t, Config{}, app(path, writeExe(t, path, "x\n")))
	h := r.Stats().Hashes
	writeExe(t, filepath.Join(dir, "other"), "y\n")
	// A registered change after the unrelated one proves the watcher has
	// processed both.
	writeExe(t, path, "z\n")
	waitEvent(t, r, path, func(ev HashChanged) bool { return ev.SHA256 == sumHex("z\n") })
	if got := r.Stats().Hashes - h; got < 1 || got > 2 {
		t.Errorf("hashes after one registered and one unrelated change = %d, want 1 or 2 (only the registered file)", got)
	}
}

func TestEventQueueMerges(t *testing.T) {
	t.Parallel()
	done := make(chan struct{})
	q := newEventQueue(done)
	k1, k2, k3 := Key{Ino: 1}, Key{Ino: 2}, Key{Ino: 3}
	q.push(HashChanged{Path: "/a", Old: Valid, New: Changed, SHA256: "1", OldKey: k1, Key: k2})
	q.push(HashChanged{Path: "/b", Old: Valid, New: Missing, OldKey: k1})
	q.push(HashChanged{Path: "/a", Old: Changed, New: Missing, OldKey: k2, Key: k3})
	go q.forward()
	want := []HashChanged{
		{Path: "/a", Old: Valid, New: Missing, OldKey: k1, Key: k3},
		{Path: "/b", Old: Valid, New: Missing, OldKey: k1},
	}
	var got []HashChanged
	for range want {
		got = append(got, <-q.out)
	}
	close(done)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivered events (-want +got):\n%s", diff)
	}
	if _, ok := <-q.out; ok {
		t.Errorf("events channel still open after done")
	}
}
