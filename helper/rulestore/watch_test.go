package rulestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/internal/testenv"
)

// watched is a loaded store with a good rule set and a running watcher
// whose events arrive on events.
type watched struct {
	*testEnv
	s      *Store
	good   []byte
	events chan Event
}

func newWatched(t *testing.T) *watched {
	t.Helper()
	e := newTestEnv(t)
	s := e.store(t)
	set := sampleSet(3, "good")
	if err := s.Write(set); err != nil {
		t.Fatal(err)
	}
	w := &watched{testEnv: e, s: s, good: encode(t, set), events: make(chan Event, 64)}
	wt, err := s.Watch(func(ev Event) { w.events <- ev })
	if err != nil {
		t.Fatalf("Watch = %v", err)
	}
	t.Cleanup(func() {
		if err := wt.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	return w
}

// next waits for the next event.
func (w *watched) next(t *testing.T) Event {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no Tampered event within 10 s")
		return Event{}
	}
}

// settle waits until the file is restored and returns every event
// delivered by then, so tests see all events one act caused.
func (w *watched) settle(t *testing.T, first Event) []Event {
	t.Helper()
	evs := []Event{first}
	waitFor(t, "the rule file to be restored", func() bool {
		b, err := os.ReadFile(w.rules)
		mode, _, _ := statOwner(t, w.rulesDir)
		return err == nil && bytes.Equal(b, w.good) && mode == os.ModeDir|0o700
	})
	for {
		select {
		case ev := <-w.events:
			evs = append(evs, ev)
		default:
			return evs
		}
	}
}

func TestWatchRevertsTampering(t *testing.T) {
	t.Parallel()
	foreign := []byte("version = 1\n[settings]\nmode = \"learning\"\n")
	tests := []struct {
		name     string
		root     bool
		tamper   func(t *testing.T, w *watched)
		changes  Change
		rejected []byte // content the rejected copy must end up with
	}{
		{
			name:     "write by another process",
			tamper:   func(t *testing.T, w *watched) { writeForeign(t, w.rules, foreign) },
			changes:  ChangeContent,
			rejected: foreign,
		},
		{
			name: "file replaced by rename, as a package update does",
			tamper: func(t *testing.T, w *watched) {
				tmp := filepath.Join(w.rulesDir, "rules.toml.dpkg-new")
				writeForeign(t, tmp, foreign)
				if err := os.Rename(tmp, w.rules); err != nil {
					t.Fatal(err)
				}
			},
			changes:  ChangeContent,
			rejected: foreign,
		},
		{
			name:    "deletion",
			tamper:  func(t *testing.T, w *watched) { os.Remove(w.rules) },
			changes: ChangeDeleted,
		},
		{
			name: "rename away",
			tamper: func(t *testing.T, w *watched) {
				if err := os.Rename(w.rules, filepath.Join(w.rulesDir, "moved.toml")); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeRenamed,
		},
		{
			name:    "chmod 0644",
			tamper:  func(t *testing.T, w *watched) { os.Chmod(w.rules, 0o644) },
			changes: ChangeMode,
		},
		{
			name: "chown to another user",
			root: true,
			tamper: func(t *testing.T, w *watched) {
				if err := os.Chown(w.rules, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeOwner,
		},
		{
			name:    "directory deleted",
			tamper:  func(t *testing.T, w *watched) { os.RemoveAll(w.rulesDir) },
			changes: ChangeDeleted,
		},
		{
			name: "directory renamed away",
			tamper: func(t *testing.T, w *watched) {
				if err := os.Rename(w.rulesDir, w.rulesDir+".old"); err != nil {
					t.Fatal(err)
				}
			},
			changes: ChangeRenamed,
		},
		{
			name:    "directory made world-writable",
			tamper:  func(t *testing.T, w *watched) { os.Chmod(w.rulesDir, 0o777) },
			changes: ChangeDirMode,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.root {
				testenv.RequireRoot(t)
			}
			w := newWatched(t)
			before := w.s.Snapshot()
			tt.tamper(t, w)
			evs := w.settle(t, w.next(t))

			var all Change
			var rejected string
			for _, ev := range evs {
				all |= ev.Changes
				if ev.Path != w.rules || ev.Time.IsZero() {
					t.Errorf("event %+v: want path %s and a time", ev, w.rules)
				}
				if ev.Rejected != "" {
					rejected = ev.Rejected
				}
			}
			if all != tt.changes {
				t.Errorf("changes = %v over %d events, want %v", all, len(evs), tt.changes)
			}
			checkRestored(t, w.testEnv, w.good)
			if tt.rejected != nil {
				// The foreign writer may still be writing into the file the
				// store moved aside: nothing it wrote is lost.
				waitFor(t, "the rejected copy to hold the foreign content", func() bool {
					b, _ := os.ReadFile(rejected)
					return bytes.Equal(b, tt.rejected)
				})
				checkRejected(t, w.testEnv, rejected, tt.rejected)
			} else {
				checkRejected(t, w.testEnv, rejected, nil)
			}
			// Enforcement stays on the last good rules.
			if diff := cmp.Diff(before, w.s.Snapshot(), cmpOpts); diff != "" {
				t.Errorf("Snapshot changed by tampering (-want +got):\n%s", diff)
			}
			// The watch is still in place for the next attempt.
			writeForeign(t, w.rules, []byte("version = 1\n"))
			if ev := w.settle(t, w.next(t))[0]; ev.Changes&ChangeContent == 0 {
				t.Errorf("second tampering: event %v, want a content change", ev.Changes)
			}
		})
	}
}

func TestWatchIgnoresOwnWrites(t *testing.T) {
	t.Parallel()
	w := newWatched(t)
	for i := range 20 {
		set := sampleSet(i%5+1, "own")
		if err := w.s.Write(set); err != nil {
			t.Fatal(err)
		}
		w.good = encode(t, set)
	}
	// A foreign write afterwards is the first and only tampering seen.
	writeForeign(t, w.rules, []byte("version = 1\n"))
	evs := w.settle(t, w.next(t))
	for _, ev := range evs {
		if ev.Changes != ChangeContent {
			t.Errorf("event %v, want only the foreign content change", ev.Changes)
		}
	}
}

func TestWatchSymlinkSwappedIn(t *testing.T) {
	t.Parallel()
	w := newWatched(t)
	target := filepath.Join(t.TempDir(), "evil.toml")
	writeForeign(t, target, w.good)
	tmp := filepath.Join(w.rulesDir, "link")
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, w.rules); err != nil {
		t.Fatal(err)
	}
	evs := w.settle(t, w.next(t))
	if evs[0].Changes != ChangeType || evs[0].Detail != "symlink to "+target {
		t.Errorf("event %+v, want a type change naming the link target", evs[0])
	}
	checkRestored(t, w.testEnv, w.good)
}

func TestWatchRequiresLoad(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if _, err := New(e.cfg).Watch(func(Event) {}); err == nil {
		t.Error("Watch before Load succeeded")
	}
}

func TestTamperErrorMatches(t *testing.T) {
	t.Parallel()
	err := error(&TamperError{Event: Event{Path: "/etc/aegis/rules.toml", Changes: ChangeContent | ChangeMode}})
	if !errors.Is(err, ErrTampered) {
		t.Errorf("errors.Is(%v, ErrTampered) = false", err)
	}
	if got, want := ChangeContent|ChangeMode, "content|mode"; got.String() != want {
		t.Errorf("Change.String() = %q, want %q", got, want)
	}
}
