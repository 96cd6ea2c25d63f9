package apps

import (
	"errors"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// syncWatches makes the set of watched directories the set of registered
// paths' directories. Directories are watched rather than files because
// package updates replace a file by renaming a new one over it, which a
// watch on the old inode would not report. A directory that cannot be
// watched (it does not exist yet) is retried at the next sync; until then
// its apps are only re-hashed on demand.
func (r *Registry) syncWatches() {
	r.mu.RLock()
	want := make(map[string]bool)
	for p := range r.entries {
		want[filepath.Dir(p)] = true
	}
	r.mu.RUnlock()

	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	for d := range want {
		if r.watched[d] {
			continue
		}
		if err := r.watcher.Add(d); err != nil {
			r.log.Warn("cannot watch directory of registered executables", "path", d, "err", err)
			continue
		}
		r.watched[d] = true
	}
	for d := range r.watched {
		if want[d] {
			continue
		}
		if err := r.watcher.Remove(d); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
			r.log.Debug("remove directory watch", "path", d, "err", err)
		}
		delete(r.watched, d)
	}
}

// watch turns fsnotify events into re-hashes. Events for registered paths
// are collected for Debounce from the first one, then each named file is
// hashed once; the timer is armed only while events are pending, so an
// idle registry does no work. A kernel queue overflow re-hashes every
// registered file.
func (r *Registry) watch() {
	pending := make(map[string]bool)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	arm := func() {
		if !armed && len(pending) > 0 {
			timer.Reset(r.cfg.Debounce)
			armed = true
		}
	}
	for {
		select {
		case <-r.done:
			timer.Stop()
			return
		case ev, ok := <-r.watcher.Events:
			if !ok {
				return
			}
			r.note(pending, filepath.Clean(ev.Name), ev)
			arm()
		case err, ok := <-r.watcher.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				r.log.Warn("file event queue overflowed; re-hashing every registered executable")
				r.mu.RLock()
				for p := range r.entries {
					pending[p] = true
				}
				r.mu.RUnlock()
				arm()
				continue
			}
			r.log.Warn("file watcher", "err", err)
		case <-timer.C:
			armed = false
			batch := pending
			pending = make(map[string]bool)
			for p := range batch {
				select {
				case <-r.done:
					return
				default:
				}
				if err := r.refresh(p); errors.Is(err, ErrChangedWhileHashing) {
					pending[p] = true // still being written: look again
				}
			}
			arm()
		}
	}
}

// note adds the registered paths an event concerns to pending: the named
// file, or every registered file of a watched directory that was itself
// removed or renamed.
func (r *Registry) note(pending map[string]bool, name string, ev fsnotify.Event) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.entries[name]; ok {
		pending[name] = true
		return
	}
	if !ev.Has(fsnotify.Remove) && !ev.Has(fsnotify.Rename) {
		return
	}
	dirGone := false
	for p := range r.entries {
		if filepath.Dir(p) == name {
			pending[p] = true
			dirGone = true
		}
	}
	if dirGone {
		r.watchMu.Lock()
		delete(r.watched, name)
		r.watchMu.Unlock()
	}
}
