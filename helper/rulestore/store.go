package rulestore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aegisfw/aegis/helper/rules"
)

// Default paths.
const (
	DefaultRulesFile = "/etc/aegis/rules.toml"
	DefaultDropInDir = "/etc/aegis/rules.d"
	DefaultStateDir  = "/var/lib/aegis"
)

// Names of the files in Config.StateDir.
const (
	SealName     = "rules.seal"
	LastGoodName = "rules.last-good.toml"
)

// ErrTampered means the rule file was changed behind the helper's back and
// has been restored from the last good copy. Load returns it (as a
// *TamperError) next to a valid Snapshot.
var ErrTampered = errors.New("rule file tampered with")

// Config says where the store keeps its files. Empty paths take the
// defaults; the zero UID and GID mean root, the owner the files and
// directories must have.
type Config struct {
	RulesFile string
	DropInDir string
	StateDir  string
	UID, GID  int
	// Logger receives one line per write and per tampering; nil discards.
	Logger *slog.Logger
	// Now is the clock used to name rejected copies; nil means time.Now.
	Now func() time.Time
}

// Store owns the rule file. It is safe for concurrent use; writes and
// checks are serialised.
type Store struct {
	cfg      Config
	log      *slog.Logger
	sealPath string
	lastGood string

	mu      sync.Mutex
	sealed  []byte   // content of the good file
	sum     [32]byte // its SHA-256
	main    *rules.Set
	dropIns []*rules.Set
	skipped []error
}

// New returns a store for cfg. It does no I/O; call Load next.
func New(cfg Config) *Store {
	if cfg.RulesFile == "" {
		cfg.RulesFile = DefaultRulesFile
	}
	if cfg.DropInDir == "" {
		cfg.DropInDir = DefaultDropInDir
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{
		cfg:      cfg,
		log:      log.With("component", "rulestore"),
		sealPath: filepath.Join(cfg.StateDir, SealName),
		lastGood: filepath.Join(cfg.StateDir, LastGoodName),
		main:     rules.Default(),
	}
}

// Snapshot is the rule set in force.
type Snapshot struct {
	// Main is the sealed rule file's set.
	Main *rules.Set
	// Effective is Main merged with the drop-ins; enforce this one.
	Effective *rules.Set
	// Overrides lists drop-in entries that replaced earlier ones.
	Overrides []rules.Override
	// Skipped holds one error per drop-in that was left out.
	Skipped []error
}

// Snapshot returns the rules in force. They change only through Load,
// Write and ReloadDropIns, never through tampering.
func (s *Store) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *Store) snapshotLocked() *Snapshot {
	eff, ov := rules.Merge(s.main, s.dropIns...)
	return &Snapshot{Main: s.main.Clone(), Effective: eff, Overrides: ov, Skipped: append([]error(nil), s.skipped...)}
}

// Write encodes set, and writes and seals it atomically. It returns a
// *rules.ParseError if set does not validate. On success the set is in
// force.
func (s *Store) Write(set *rules.Set) error {
	data, err := rules.Encode(set)
	if err != nil {
		return fmt.Errorf("write rules: %w", err)
	}
	if len(data) > rules.MaxSize {
		return fmt.Errorf("write rules: encoded set is %d bytes, larger than %d", len(data), rules.MaxSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.installLocked(data); err != nil {
		return fmt.Errorf("write rules: %w", err)
	}
	s.main = withSource(set, s.cfg.RulesFile)
	s.log.Info("rules written", "path", s.cfg.RulesFile, "apps", len(set.Apps), "sha256", fmt.Sprintf("%x", s.sum))
	return nil
}

func withSource(set *rules.Set, name string) *rules.Set {
	c := set.Clone()
	c.Version = rules.SchemaVersion
	for i := range c.Apps {
		c.Apps[i].Source = name
	}
	return c
}

// installLocked makes data the sealed content: last-good copy, seal
// (naming the content it replaces too), the rule file, and the seal again
// without the previous content. Each step is atomic; Load completes or
// discards an interrupted sequence.
func (s *Store) installLocked(data []byte) error {
	if err := s.ensureDirs(); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if err := writeAtomic(s.lastGood, data, s.cfg.UID, s.cfg.GID); err != nil {
		return fmt.Errorf("save last good copy: %w", err)
	}
	sl := seal{current: sum}
	if s.sealed != nil && s.sum != sum {
		sl.previous, sl.hasPrevious = s.sum, true
	}
	if err := writeAtomic(s.sealPath, sl.encode(), s.cfg.UID, s.cfg.GID); err != nil {
		return fmt.Errorf("write seal: %w", err)
	}
	if err := writeAtomic(s.cfg.RulesFile, data, s.cfg.UID, s.cfg.GID); err != nil {
		return err
	}
	s.sealed, s.sum = data, sum
	if sl.hasPrevious {
		// Forget the previous content, so that putting it back later is
		// tampering rather than an interrupted write.
		sl = seal{current: sum}
		if err := writeAtomic(s.sealPath, sl.encode(), s.cfg.UID, s.cfg.GID); err != nil {
			return fmt.Errorf("write seal: %w", err)
		}
	}
	return nil
}

// restoreLocked puts the sealed content back into the rule file.
func (s *Store) restoreLocked() error {
	if err := s.ensureDirs(); err != nil {
		return err
	}
	return writeAtomic(s.cfg.RulesFile, s.sealed, s.cfg.UID, s.cfg.GID)
}

// ensureDirs creates the rule and state directories if they are missing.
func (s *Store) ensureDirs() error {
	for _, d := range []string{filepath.Dir(s.cfg.RulesFile), s.cfg.StateDir} {
		if err := os.MkdirAll(d, DirMode); err != nil {
			return err
		}
	}
	return nil
}

// fixDir makes dir a directory of DirMode owned by the configured owner,
// creating it if needed, and reports what it had to change. A symlink or
// other non-directory in its place is an error: the store will not guess
// where the rules belong.
func (s *Store) fixDir(dir string) (Change, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, DirMode); err != nil {
			return 0, err
		}
		if err := os.Chown(dir, s.cfg.UID, s.cfg.GID); err != nil {
			return 0, err
		}
		return 0, os.Chmod(dir, DirMode)
	}
	if err != nil {
		return 0, err
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("%s is not a directory (mode %v)", dir, fi.Mode())
	}
	var c Change
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != s.cfg.UID || int(st.Gid) != s.cfg.GID {
		c |= ChangeDirOwner
		if err := os.Lchown(dir, s.cfg.UID, s.cfg.GID); err != nil {
			return c, err
		}
	}
	if fi.Mode().Perm() != DirMode || fi.Mode()&(fs.ModeSetgid|fs.ModeSticky|fs.ModeSetuid) != 0 {
		c |= ChangeDirMode
		if err := os.Chmod(dir, DirMode); err != nil {
			return c, err
		}
	}
	return c, nil
}

// reject moves the file at the rule path aside as a rejected copy and
// returns its path. Regular files get mode 0600 and the configured owner;
// a symlink is kept as a symlink, unfollowed.
func (s *Store) reject(in *inspection) (string, error) {
	base := s.cfg.RulesFile + ".rejected-" + s.cfg.Now().UTC().Format("20060102T150405.000000000Z")
	dst := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		}
		dst = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(s.cfg.RulesFile, dst); err != nil {
		return "", err
	}
	if !in.symlink && !in.irregular {
		f, err := os.OpenFile(dst, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err == nil {
			f.Chmod(FileMode)
			fchown(f, s.cfg.UID, s.cfg.GID)
			f.Close()
		}
	}
	return dst, syncDir(filepath.Dir(dst))
}

// discard removes the file at the rule path: used when only its mode or
// owner was wrong and its content is the sealed one.
func (s *Store) discard() error {
	err := os.Remove(s.cfg.RulesFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// readState reads the seal and the last-good copy. ok is false when there
// is no seal; good is the last-good content when it matches the seal.
func (s *Store) readState() (sl seal, ok bool, good []byte, err error) {
	data, err := os.ReadFile(s.sealPath)
	if errors.Is(err, fs.ErrNotExist) {
		return sl, false, nil, nil
	}
	if err != nil {
		return sl, false, nil, err
	}
	if sl, err = parseSeal(data); err != nil {
		s.log.Warn("seal unreadable: treating the rule file as unsealed", "path", s.sealPath, "err", err)
		return sl, false, nil, nil
	}
	in, err := inspect(s.lastGood, FileMode, s.cfg.UID, s.cfg.GID)
	if err != nil {
		return sl, true, nil, err
	}
	if !in.missing && !in.symlink && !in.irregular && !in.tooLarge && in.sum == sl.current {
		good = in.data
	}
	return sl, true, good, nil
}

// Load reads the rule file at start, checking it against the seal and the
// permission rules, and reads the drop-ins. See the package documentation
// for what is accepted. When the file was refused and the last good copy
// (or, with none, the default set) put in its place, Load returns the
// resulting Snapshot together with a *TamperError matching ErrTampered:
// the snapshot is valid and should be enforced. Other errors mean the
// store could not establish any rule set.
func (s *Store) Load() (*Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rulesDir := filepath.Dir(s.cfg.RulesFile)

	if _, err := s.fixDir(s.cfg.StateDir); err != nil {
		return nil, fmt.Errorf("load rules: state directory: %w", err)
	}
	dirChange, err := s.fixDir(rulesDir)
	if err != nil {
		return nil, fmt.Errorf("load rules: rule directory: %w", err)
	}
	removeTemps(rulesDir)
	removeTemps(s.cfg.StateDir)

	sl, sealed, good, err := s.readState()
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	in, err := inspect(s.cfg.RulesFile, FileMode, s.cfg.UID, s.cfg.GID)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	regular := !in.missing && !in.symlink && !in.irregular && !in.tooLarge
	ev := Event{Time: s.cfg.Now(), Path: s.cfg.RulesFile, Changes: dirChange}

	// install makes content the sealed rules; content must parse.
	install := func(content []byte) error {
		set, err := rules.Parse(s.cfg.RulesFile, content)
		if err != nil {
			return fmt.Errorf("sealed rules do not parse (written by a newer Aegis?): %w", err)
		}
		if err := s.installLocked(content); err != nil {
			return err
		}
		s.main = set
		return nil
	}
	// refuse moves the file aside and falls back to the last good copy or
	// the default set.
	refuse := func() error {
		ev.Changes |= in.changes()
		if in.tooLarge || regular && (sealed && in.sum != sl.current || !sealed && in.parseErr(s.cfg.RulesFile) != nil) {
			ev.Changes |= ChangeContent
		}
		if in.missing {
			if ev.Changes&ChangeDeleted == 0 {
				ev.Changes |= ChangeDeleted
			}
		} else {
			ev.Err = in.parseErr(s.cfg.RulesFile)
			if in.symlink {
				ev.Detail = "symlink to " + in.target
			}
			p, err := s.reject(in)
			if err != nil {
				return fmt.Errorf("move refused file aside: %w", err)
			}
			ev.Rejected = p
		}
		if good != nil {
			return install(good)
		}
		ev.Detail = strings.TrimPrefix(ev.Detail+"; no good copy: using the default rules", "; ")
		data, err := rules.Encode(rules.Default())
		if err != nil {
			return err
		}
		return install(data)
	}

	switch {
	case !sealed && in.missing:
		// First start.
		data, err := rules.Encode(rules.Default())
		if err == nil {
			err = install(data)
		}
		if err != nil {
			return nil, fmt.Errorf("load rules: first start: %w", err)
		}
		s.log.Info("created default rule file", "path", s.cfg.RulesFile)
	case !sealed:
		// A file nobody sealed: accept it if it is sound.
		// (refuse reports why it does not parse.)
		var set *rules.Set
		if regular && !in.permBad() && dirChange == 0 {
			set, _ = rules.Parse(s.cfg.RulesFile, in.data)
		}
		if set != nil {
			if err := install(in.data); err != nil {
				return nil, fmt.Errorf("load rules: %w", err)
			}
			s.log.Info("sealed existing rule file", "path", s.cfg.RulesFile, "apps", len(set.Apps))
			break
		}
		if err := refuse(); err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
	case regular && in.sum == sl.current:
		if in.permBad() {
			ev.Changes |= in.changes()
			if err := s.discard(); err != nil {
				return nil, fmt.Errorf("load rules: %w", err)
			}
		}
		if err := install(in.data); err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
	case regular && !in.permBad() && dirChange == 0 && sl.hasPrevious && in.sum == sl.previous && good != nil:
		// A write was interrupted between the seal and the rename: finish it.
		if err := install(good); err != nil {
			return nil, fmt.Errorf("load rules: complete interrupted write: %w", err)
		}
		s.log.Info("completed an interrupted rule write", "path", s.cfg.RulesFile)
	default:
		if err := refuse(); err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
	}
	s.loadDropInsLocked()
	snap := s.snapshotLocked()
	if ev.Changes != 0 {
		s.logTamper(ev)
		return snap, &TamperError{Event: ev}
	}
	return snap, nil
}

// ReloadDropIns reads the drop-in directory again and returns the
// resulting snapshot.
func (s *Store) ReloadDropIns() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadDropInsLocked()
	return s.snapshotLocked()
}

func (s *Store) loadDropInsLocked() {
	s.dropIns, s.skipped = nil, nil
	dir := s.cfg.DropInDir
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		err = s.checkDropInPerm(fi)
	}
	if err != nil {
		s.skip(fmt.Errorf("drop-in directory %s: %w", dir, err))
		return
	}
	names, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		s.skip(fmt.Errorf("drop-in directory %s: %w", dir, err))
		return
	}
	sort.Strings(names)
	for _, name := range names {
		set, err := s.readDropIn(name)
		if err != nil {
			s.skip(fmt.Errorf("drop-in %s: %w", name, err))
			continue
		}
		s.dropIns = append(s.dropIns, set)
	}
}

func (s *Store) skip(err error) {
	s.log.Warn("drop-in skipped", "err", err)
	s.skipped = append(s.skipped, err)
}

func (s *Store) checkDropInPerm(fi os.FileInfo) error {
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != s.cfg.UID {
		return fmt.Errorf("owned by uid %d, want %d", st.Uid, s.cfg.UID)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("mode %v is writable by group or others", fi.Mode().Perm())
	}
	return nil
}

func (s *Store) readDropIn(name string) (*rules.Set, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if err := s.checkDropInPerm(fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, rules.MaxSize+1))
	if err != nil {
		return nil, err
	}
	return rules.ParseDropIn(name, data)
}
