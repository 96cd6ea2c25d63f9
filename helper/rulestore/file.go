package rulestore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/helper/rules"
)

// File modes the store requires and writes.
const (
	FileMode os.FileMode = 0o600
	DirMode  os.FileMode = 0o700
)

const tempInfix = ".tmp-"

// writeAtomic replaces path with data: a temporary file in the same
// directory, owned uid:gid with FileMode, written and fsynced, renamed
// over path, and the directory fsynced.
func writeAtomic(path string, data []byte, uid, gid int) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+tempInfix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(FileMode); err != nil {
		return err
	}
	if err = fchown(f, uid, gid); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// fchown sets the owner unless it already is uid:gid, so that tests can
// run unprivileged with their own uid as the owner.
func fchown(f *os.File, uid, gid int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) == uid && int(st.Gid) == gid {
		return nil
	}
	return f.Chown(uid, gid)
}

func syncDir(dir string) error {
	if dir == "" {
		dir = "."
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// removeTemps deletes temporary files a killed writer left in dir.
func removeTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, ".") && strings.Contains(n, tempInfix) && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// inspection is what the store found at a path, without following a
// symlink there.
type inspection struct {
	missing   bool
	symlink   bool   // a symlink, not followed
	target    string // the symlink's target
	irregular bool   // a directory, FIFO, device or socket
	modeBad   bool
	ownerBad  bool
	tooLarge  bool
	data      []byte // up to rules.MaxSize bytes of content
	sum       [32]byte
	mode      os.FileMode
	uid, gid  uint32
}

func (in *inspection) permBad() bool { return in.modeBad || in.ownerBad }

// inspect looks at path: type, permissions against want and owner, and
// content. Reading uses O_NOFOLLOW and O_NONBLOCK, so neither a symlink
// swapped in after the Lstat nor a FIFO can redirect or block it.
func inspect(path string, want os.FileMode, uid, gid int) (*inspection, error) {
	in := &inspection{}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		in.missing = true
		return in, nil
	}
	if err != nil {
		return nil, err
	}
	in.checkPerm(fi, want, uid, gid)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		in.symlink = true
		in.target, _ = os.Readlink(path)
		return in, nil
	case !fi.Mode().IsRegular():
		in.irregular = true
		return in, nil
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		in.missing = true
		return in, nil
	}
	if errors.Is(err, unix.ELOOP) {
		in.symlink = true
		return in, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	in.checkPerm(fi, want, uid, gid)
	if !fi.Mode().IsRegular() {
		in.irregular = true
		return in, nil
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(f, rules.MaxSize+1))
	if err != nil {
		return nil, err
	}
	in.tooLarge = n > rules.MaxSize
	in.data = buf.Bytes()
	if in.tooLarge {
		in.data = in.data[:rules.MaxSize]
	}
	in.sum = sha256.Sum256(buf.Bytes())
	return in, nil
}

func (in *inspection) checkPerm(fi os.FileInfo, want os.FileMode, uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	in.mode = fi.Mode()
	in.uid, in.gid = st.Uid, st.Gid
	in.modeBad = fi.Mode().Perm() != want || fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0
	in.ownerBad = int(st.Uid) != uid || int(st.Gid) != gid
}

// seal is the content of the seal file: the SHA-256 of what the store
// last wrote and, while a write is in progress, of what it replaces.
type seal struct {
	current, previous [32]byte
	hasPrevious       bool
}

func (s seal) encode() []byte {
	var b bytes.Buffer
	b.WriteString("# Aegis rule file seal: SHA-256 of the content the helper wrote.\n")
	fmt.Fprintf(&b, "current sha256:%x\n", s.current)
	if s.hasPrevious {
		fmt.Fprintf(&b, "previous sha256:%x\n", s.previous)
	}
	return b.Bytes()
}

func parseSeal(data []byte) (seal, error) {
	var s seal
	var hasCurrent bool
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, " sha256:")
		if !ok {
			return s, fmt.Errorf("malformed seal line %q", line)
		}
		b, err := hex.DecodeString(val)
		if err != nil || len(b) != sha256.Size {
			return s, fmt.Errorf("malformed seal line %q", line)
		}
		switch key {
		case "current":
			copy(s.current[:], b)
			hasCurrent = true
		case "previous":
			copy(s.previous[:], b)
			s.hasPrevious = true
		default:
			return s, fmt.Errorf("malformed seal line %q", line)
		}
	}
	if !hasCurrent {
		return s, errors.New("seal names no current content")
	}
	return s, nil
}
