// Package apps is Aegis's trust registry: the executables the rules name,
// the SHA-256 each must hash to, whether the file on disk still does, and a
// cache that verifies a process's executable by its kernel identity.
//
// # Trust is per path and hash
//
// A registered app is trusted when the running executable is the file at
// the registered path (the same inode, device and change time, see Key)
// and that file hashes to the registered SHA-256. A byte-identical copy of
// a trusted binary at another path is not trusted: it is reported in
// Result.Copies so a prompt can say "same content as /usr/bin/curl", but
// the user has to decide about it. A hard link to a registered file is
// the same inode and so the same file; the kernel cannot tell the names
// apart either.
//
// Registered paths should be what the kernel reports as the executable
// (/proc/<pid>/exe), that is with symbolic links resolved.
package apps

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/helper/rules"
)

// ErrNotRegistered reports a path that no registered app names.
var ErrNotRegistered = errors.New("not a registered app")

// ErrInvalidApp reports an app the registry cannot take: a relative or
// unclean path, a malformed digest, or a second app for the same path and
// user.
var ErrInvalidApp = errors.New("invalid app")

// State is the hash state of a registered app.
type State int

// Hash states.
const (
	// Valid: the file at the path hashes to the registered SHA-256.
	Valid State = iota
	// Changed: the file hashes to something else, is not a regular file,
	// or could not be read; the app is no longer trusted.
	Changed
	// Missing: there is no file at the path.
	Missing
)

func (s State) String() string {
	switch s {
	case Valid:
		return "valid"
	case Changed:
		return "changed"
	case Missing:
		return "missing"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Config configures a Registry. The zero value of every field but Logger
// selects the default.
type Config struct {
	// Logger receives the registry's log lines; nil discards them.
	Logger *slog.Logger
	// DpkgInfoDir is dpkg's info directory (*.list, *.md5sums);
	// default DefaultDpkgInfoDir.
	DpkgInfoDir string
	// DpkgStatus is dpkg's status file, read for package versions;
	// default DefaultDpkgStatus.
	DpkgStatus string
	// CacheSize bounds the number of cached Check results; default 4096.
	CacheSize int
	// Debounce is how long the watcher collects file events before it
	// re-hashes the files they name; default 50 ms. It must stay well
	// below a second, the latency the registry promises for HashChanged.
	Debounce time.Duration
	// Workers is the number of files hashed at once by New, Replace and
	// RehashAll; default runtime.NumCPU().
	Workers int
}

// AppState is one registered app with the state of its file.
type AppState struct {
	App   rules.App
	State State
	// SHA256 is the digest of the file now at App.Path; empty when the
	// file is missing or could not be hashed.
	SHA256 string
	// Key is the identity of the file now at App.Path; zero when missing.
	Key Key
}

// HashChanged reports that the file at a registered path changed its
// hash state, its digest or its identity (a rewrite, a replacement, a
// mode or owner change, a removal, or a rehash).
type HashChanged struct {
	Path     string
	Old, New State
	// SHA256 is the digest of the file now at Path; empty when missing.
	SHA256 string
	// OldKey and Key are the file's identity before and after; the kernel
	// knows the app by Key from now on.
	OldKey, Key Key
}

// Stats counts the registry's work since New.
type Stats struct {
	// Hashes is the number of files hashed (every read of a file's
	// content, including failed attempts).
	Hashes uint64
	// CacheHits and CacheMisses count Check calls answered from the
	// cache or by hashing.
	CacheHits, CacheMisses uint64
	// CacheEntries is the number of results cached now.
	CacheEntries int
}

// observation is what the registry last saw at a path.
type observation struct {
	missing bool
	digest  string // empty when missing or unreadable
	key     Key
}

// entry is one registered path with its apps (one per user scope).
type entry struct {
	apps     []rules.App // sorted by UID
	obs      observation
	observed bool
	seq      uint64 // ticket of the observation in obs
}

// state is the path's hash state: Valid only if the file matches every
// app registered at the path.
func (e *entry) state() State {
	if e.obs.missing {
		return Missing
	}
	for _, a := range e.apps {
		if a.SHA256 != e.obs.digest {
			return Changed
		}
	}
	return Valid
}

func (e *entry) appState(a rules.App) State {
	switch {
	case e.obs.missing:
		return Missing
	case a.SHA256 == e.obs.digest:
		return Valid
	}
	return Changed
}

// Registry is the set of trusted executables with their hash states. It
// watches the registered files' directories with fsnotify and emits a
// HashChanged on Events within a second of a change. It is safe for
// concurrent use. Close releases the watcher.
type Registry struct {
	log     *slog.Logger
	cfg     Config
	dpkg    dpkgDB
	hasher  *hasher
	cache   *resultCache
	events  *eventQueue
	watcher *fsnotify.Watcher

	hashes, hits, misses atomic.Uint64
	ticket               atomic.Uint64

	mu      sync.RWMutex
	entries map[string]*entry

	watchMu sync.Mutex
	watched map[string]bool // directories with an fsnotify watch

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New builds a registry of apps, hashes their files (Workers at a time)
// and starts watching them. It returns an error wrapping ErrInvalidApp for
// an invalid app, or one from fsnotify.
func New(cfg Config, apps []rules.App) (*Registry, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DpkgInfoDir == "" {
		cfg.DpkgInfoDir = DefaultDpkgInfoDir
	}
	if cfg.DpkgStatus == "" {
		cfg.DpkgStatus = DefaultDpkgStatus
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 4096
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 50 * time.Millisecond
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.NumCPU()
	}
	if _, err := group(apps); err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("start file watcher: %w", err)
	}
	r := &Registry{
		log:     cfg.Logger.With("component", "apps"),
		cfg:     cfg,
		dpkg:    dpkgDB{infoDir: cfg.DpkgInfoDir, status: cfg.DpkgStatus},
		cache:   newResultCache(cfg.CacheSize),
		watcher: w,
		entries: make(map[string]*entry),
		watched: make(map[string]bool),
		done:    make(chan struct{}),
	}
	r.hasher = newHasher(func() { r.hashes.Add(1) })
	r.events = newEventQueue(r.done)
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.events.forward() }()
	go func() { defer r.wg.Done(); r.watch() }()
	if err := r.Replace(apps); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Close stops the watcher and closes the Events channel.
func (r *Registry) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.done)
		err = r.watcher.Close()
		r.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("close file watcher: %w", err)
	}
	return nil
}

// Events delivers hash changes in order. Events for one path that the
// consumer has not received yet are merged into one (Old and OldKey from
// the first, the rest from the last), so a slow consumer loses no path
// and the queue is bounded by the number of paths. The channel is closed
// by Close.
func (r *Registry) Events() <-chan HashChanged { return r.events.out }

// Stats returns the work counters.
func (r *Registry) Stats() Stats {
	return Stats{
		Hashes:       r.hashes.Load(),
		CacheHits:    r.hits.Load(),
		CacheMisses:  r.misses.Load(),
		CacheEntries: r.cache.len(),
	}
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// validate checks one app.
func validate(a rules.App) error {
	switch {
	case !filepath.IsAbs(a.Path) || filepath.Clean(a.Path) != a.Path:
		return fmt.Errorf("app %q: path must be absolute and clean: %w", a.Path, ErrInvalidApp)
	case !sha256Hex.MatchString(a.SHA256):
		return fmt.Errorf("app %q: sha256 %q is not 64 lower-case hex digits: %w", a.Path, a.SHA256, ErrInvalidApp)
	}
	return nil
}

// group validates apps and groups them by path, sorted by UID.
func group(apps []rules.App) (map[string][]rules.App, error) {
	by := make(map[string][]rules.App)
	for _, a := range apps {
		if err := validate(a); err != nil {
			return nil, err
		}
		for _, b := range by[a.Path] {
			if b.UID == a.UID {
				return nil, fmt.Errorf("app %q: registered twice for uid %d: %w", a.Path, a.UID, ErrInvalidApp)
			}
		}
		by[a.Path] = append(by[a.Path], a)
	}
	for _, as := range by {
		slices.SortFunc(as, func(x, y rules.App) int { return cmpUID(x.UID, y.UID) })
	}
	return by, nil
}

func cmpUID(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Replace makes apps the registered set: paths no longer named are
// forgotten, new paths are hashed (Workers at a time) and watched. It
// returns an error wrapping ErrInvalidApp, changing nothing, when an app
// is invalid.
func (r *Registry) Replace(apps []rules.App) error {
	by, err := group(apps)
	if err != nil {
		return err
	}
	var fresh []string
	var evs []HashChanged
	r.mu.Lock()
	next := make(map[string]*entry, len(by))
	for p, as := range by {
		e := r.entries[p]
		if e == nil {
			e = &entry{}
			fresh = append(fresh, p)
		}
		old := e.state()
		e.apps = as
		if e.observed && e.state() != old {
			evs = append(evs, HashChanged{Path: p, Old: old, New: e.state(), SHA256: e.obs.digest, OldKey: e.obs.key, Key: e.obs.key})
		}
		next[p] = e
	}
	r.entries = next
	r.mu.Unlock()
	r.cache.clear()
	r.syncWatches()
	for _, ev := range evs {
		r.events.push(ev)
	}
	slices.Sort(fresh)
	r.parallel(len(fresh), func(i int) { r.refresh(fresh[i]) })
	return nil
}

// Set registers app, replacing the app with the same path and UID, and
// hashes its file if the path is new. It returns an error wrapping
// ErrInvalidApp for an invalid app.
func (r *Registry) Set(app rules.App) error {
	if err := validate(app); err != nil {
		return err
	}
	r.mu.Lock()
	e := r.entries[app.Path]
	isNew := e == nil
	if isNew {
		e = &entry{}
		r.entries[app.Path] = e
	}
	old := e.state()
	i := slices.IndexFunc(e.apps, func(a rules.App) bool { return a.UID == app.UID })
	if i >= 0 {
		e.apps[i] = app
	} else {
		e.apps = append(e.apps, app)
		slices.SortFunc(e.apps, func(x, y rules.App) int { return cmpUID(x.UID, y.UID) })
	}
	var ev *HashChanged
	if e.observed && e.state() != old {
		ev = &HashChanged{Path: app.Path, Old: old, New: e.state(), SHA256: e.obs.digest, OldKey: e.obs.key, Key: e.obs.key}
	}
	r.mu.Unlock()
	r.cache.clear()
	if ev != nil {
		r.events.push(*ev)
	}
	if isNew {
		r.syncWatches()
		r.refresh(app.Path)
	}
	return nil
}

// Remove forgets the app for path and uid and reports whether there was
// one. The path stops being watched when its last app is removed.
func (r *Registry) Remove(path string, uid uint32) bool {
	r.mu.Lock()
	e := r.entries[path]
	i := -1
	if e != nil {
		i = slices.IndexFunc(e.apps, func(a rules.App) bool { return a.UID == uid })
	}
	if i < 0 {
		r.mu.Unlock()
		return false
	}
	e.apps = slices.Delete(e.apps, i, i+1)
	gone := len(e.apps) == 0
	if gone {
		delete(r.entries, path)
	}
	r.mu.Unlock()
	r.cache.clear()
	if gone {
		r.syncWatches()
	}
	return true
}

// Apps returns every registered app with the last known state of its
// file, sorted by path and UID. It does not hash anything.
func (r *Registry) Apps() []AppState {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]AppState, 0, len(r.entries))
	for _, e := range r.entries {
		for _, a := range e.apps {
			out = append(out, AppState{App: a, State: e.appState(a), SHA256: e.obs.digest, Key: e.obs.key})
		}
	}
	slices.SortFunc(out, func(x, y AppState) int {
		if x.App.Path != y.App.Path {
			if x.App.Path < y.App.Path {
				return -1
			}
			return 1
		}
		return cmpUID(x.App.UID, y.App.UID)
	})
	return out
}

// State hashes the file at path now and returns its hash state: Valid
// only if it matches every app registered at path. It returns an error
// wrapping ErrNotRegistered for an unknown path.
func (r *Registry) State(path string) (State, error) {
	r.mu.RLock()
	_, ok := r.entries[path]
	r.mu.RUnlock()
	if !ok {
		return 0, fmt.Errorf("state of %q: %w", path, ErrNotRegistered)
	}
	r.refresh(path)
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.entries[path]
	if !ok {
		return 0, fmt.Errorf("state of %q: %w", path, ErrNotRegistered)
	}
	return e.state(), nil
}

// observe hashes the file at path. A missing file (or a missing
// directory on the way) is an observation, not an error; so is a file
// that is not regular (no digest). A file that keeps changing while it is
// read is retried a few times. withMD5 also computes the MD5 for dpkg.
func (r *Registry) observe(path string, withMD5 bool) (observation, digest, error) {
	var err error
	for range 3 {
		var f *os.File
		// O_NONBLOCK: a FIFO put in place of an executable must not
		// block the watcher; it has no effect on regular files.
		f, err = os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return observation{missing: true}, digest{}, nil
		}
		if err != nil {
			return observation{}, digest{}, fmt.Errorf("open executable: %w", err)
		}
		var d digest
		d, err = r.hasher.hashFile(f, withMD5)
		f.Close()
		switch {
		case err == nil:
			return observation{digest: hexDigest(d.sha256), key: d.key}, d, nil
		case errors.Is(err, errNotRegular):
			k, kerr := statKey(path)
			if kerr != nil {
				return observation{missing: true}, digest{}, nil
			}
			return observation{key: k}, digest{}, nil
		case !errors.Is(err, ErrChangedWhileHashing):
			return observation{}, digest{}, err
		}
	}
	return observation{}, digest{}, err
}

// refresh observes path and records the result, emitting a HashChanged if
// anything changed. A file that cannot be read is recorded as changed (no
// digest) and logged. It returns the observation's error.
func (r *Registry) refresh(path string) error {
	t := r.ticket.Add(1)
	obs, _, err := r.observe(path, false)
	if err != nil {
		r.log.Warn("cannot hash registered executable", "path", path, "err", err)
		obs = observation{}
		if k, kerr := statKey(path); kerr == nil {
			obs.key = k
		}
	}
	r.apply(path, t, obs, nil)
	return err
}

// apply records obs for path if it is newer than what is recorded, and
// calls update (if non-nil) under the lock to edit the apps too.
func (r *Registry) apply(path string, ticket uint64, obs observation, update func(*entry)) {
	r.mu.Lock()
	e := r.entries[path]
	if e == nil || (ticket < e.seq && update == nil) {
		r.mu.Unlock()
		return
	}
	prev, prevState, wasObserved := e.obs, e.state(), e.observed
	if ticket >= e.seq {
		e.obs, e.seq, e.observed = obs, ticket, true
	}
	if update != nil {
		update(e)
	}
	now := e.state()
	cur := e.obs
	r.mu.Unlock()

	if !wasObserved {
		if now == Valid {
			r.log.Debug("registered executable", "path", path, "sha256", cur.digest, "state", now)
		} else {
			r.log.Warn("registered executable does not match its hash", "path", path, "sha256", cur.digest, "state", now)
		}
		return
	}
	if prev == cur && prevState == now {
		return
	}
	r.cache.invalidate(path, prev.key, cur.key)
	ev := HashChanged{Path: path, Old: prevState, New: now, SHA256: cur.digest, OldKey: prev.key, Key: cur.key}
	if now == Valid {
		r.log.Info("executable hash state", "path", path, "state", now, "old_state", prevState, "sha256", cur.digest)
	} else {
		r.log.Warn("executable hash state", "path", path, "state", now, "old_state", prevState, "sha256", cur.digest)
	}
	r.events.push(ev)
}

// parallel runs fn(0..n-1) on at most Workers goroutines.
func (r *Registry) parallel(n int, fn func(int)) {
	workers := min(r.cfg.Workers, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}
