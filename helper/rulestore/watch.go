package rulestore

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"
)

// Watcher watches the rule directory for tampering; see Store.Watch.
type Watcher struct {
	s    *Store
	fw   *fsnotify.Watcher
	fn   func(Event)
	dir  string
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Watch starts watching the rule file's directory with fsnotify. The watch
// is in place when Watch returns. Every change that leaves the file other
// than sealed (see the package documentation) is reverted, and fn is
// called with the Event, from the watcher's goroutine and without the
// store's lock held; fn should return quickly. Watch checks the file once
// before it returns (calling fn from the caller's goroutine if that finds
// tampering), so a change made between Load and Watch is caught too. Load
// must have succeeded first.
func (s *Store) Watch(fn func(Event)) (*Watcher, error) {
	s.mu.Lock()
	loaded := s.sealed != nil
	s.mu.Unlock()
	if !loaded {
		return nil, errors.New("watch rules: Load has not succeeded")
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch rules: %w", err)
	}
	w := &Watcher{s: s, fw: fw, fn: fn, dir: filepath.Dir(s.cfg.RulesFile), done: make(chan struct{})}
	if err := fw.Add(w.dir); err != nil {
		fw.Close()
		return nil, fmt.Errorf("watch rules: %w", err)
	}
	w.check(0)
	w.wg.Add(1)
	go w.run()
	return w, nil
}

// Close stops the watcher and waits for its goroutine to end.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.done)
		err = w.fw.Close()
		w.wg.Wait()
	})
	return err
}

func (w *Watcher) run() {
	defer w.wg.Done()
	for {
		select {
		case <-w.done:
			return
		case e, ok := <-w.fw.Events:
			if !ok {
				return
			}
			w.handle(e)
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflowed queue may have hidden a change: check anyway.
			w.s.log.Warn("rule directory watch error", "path", w.dir, "err", err)
			w.check(0)
		}
	}
}

func (w *Watcher) handle(e fsnotify.Event) {
	switch e.Name {
	case w.s.cfg.RulesFile:
		var hint Change
		switch {
		case e.Has(fsnotify.Rename):
			hint = ChangeRenamed
		case e.Has(fsnotify.Remove):
			hint = ChangeDeleted
		}
		w.check(hint)
	case w.dir:
		if !e.Has(fsnotify.Remove) && !e.Has(fsnotify.Rename) {
			w.check(0) // mode or owner of the directory
			return
		}
		// The directory itself went away: the watch went with it (or
		// follows the old inode). Recreate, restore and watch again.
		w.fw.Remove(w.dir)
		hint := ChangeDeleted
		if e.Has(fsnotify.Rename) {
			hint = ChangeRenamed
		}
		w.check(hint)
		if err := w.fw.Add(w.dir); err != nil {
			w.s.log.Error("cannot watch the rule directory again", "path", w.dir, "err", err)
		}
		w.check(0) // anything done before the new watch was in place
	}
}

func (w *Watcher) check(hint Change) {
	ev, err := w.s.check(hint)
	if err != nil {
		w.s.log.Error("cannot restore the rule file", "path", w.s.cfg.RulesFile, "err", err)
	}
	if ev.Changes != 0 {
		w.s.logTamper(ev)
		w.fn(ev)
	}
}

// check compares the rule file with the seal and reverts any difference.
// hint says how a missing file disappeared, when an event told.
func (s *Store) check(hint Change) (Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := Event{Time: s.cfg.Now(), Path: s.cfg.RulesFile}
	dirChange, err := s.fixDir(filepath.Dir(s.cfg.RulesFile))
	ev.Changes |= dirChange
	if err != nil {
		return ev, err
	}
	in, err := inspect(s.cfg.RulesFile, FileMode, s.cfg.UID, s.cfg.GID)
	if err != nil {
		return ev, err
	}
	regular := !in.missing && !in.symlink && !in.irregular && !in.tooLarge
	switch {
	case regular && in.sum == s.sum && !in.permBad():
		return ev, nil
	case in.missing:
		if hint == 0 {
			hint = ChangeDeleted
		}
		ev.Changes |= hint
	default:
		ev.Changes |= in.changes()
		if in.tooLarge || regular && in.sum != s.sum {
			ev.Changes |= ChangeContent
		}
		if ev.Changes&(ChangeContent|ChangeType) != 0 {
			ev.Err = in.parseErr(s.cfg.RulesFile)
			if in.symlink {
				ev.Detail = "symlink to " + in.target
			}
			if ev.Rejected, err = s.reject(in); err != nil {
				return ev, fmt.Errorf("move refused file aside: %w", err)
			}
		} else if err := s.discard(); err != nil {
			return ev, err
		}
	}
	return ev, s.restoreLocked()
}
