package apps

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/helper/proc"
)

// ErrChangedWhileHashing reports that a file's size, times or identity
// differed between the fstat before and the fstat after reading it: the
// digest describes no version of the file and was discarded.
var ErrChangedWhileHashing = errors.New("file changed while being hashed")

// ErrKeyMismatch reports that the open file given to Check is not the file
// the kernel's exe identity names.
var ErrKeyMismatch = errors.New("open file does not match the exe identity")

// bufSize is the read size for hashing. Reads of 1 MiB keep the syscall
// cost negligible next to SHA-256 and match what sha256sum-class tools do.
const bufSize = 1 << 20

// Key is the kernel's identity of an executable (see proc.Key): results
// are cached by it. Where stat reports a device other than the
// superblock's (btrfs subvolumes, overlayfs), the kernel's and fstat's Dev
// can disagree; Check then fails with ErrKeyMismatch, so the disagreement
// fails closed.
type Key = proc.Key

// keyOf builds the Key of a stat result.
func keyOf(st *unix.Stat_t) Key { return proc.KeyOf(st) }

// FileKey returns the Key of an open file, computed from fstat.
func FileKey(f *os.File) (Key, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Key{}, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	return keyOf(&st), nil
}

// hasher hashes open files with reusable buffers. It is safe for
// concurrent use.
type hasher struct {
	bufs sync.Pool
	// count, when set, is called once per file hashed (tests count
	// hashing work through it).
	count func()
}

func newHasher(count func()) *hasher {
	h := &hasher{count: count}
	h.bufs.New = func() any {
		b := make([]byte, bufSize)
		return &b
	}
	return h
}

// digest is the outcome of hashing one file.
type digest struct {
	sha256 [32]byte
	md5    [16]byte // only when asked for
	key    Key
	size   int64
}

// hashFile reads f from offset 0 with pread (so the file offset is neither
// used nor moved) into SHA-256 and, when withMD5 is set, MD5 in the same
// pass. It fstats f before and after and returns ErrChangedWhileHashing
// when the size, modification time, change time or inode differ, or when
// fewer or more bytes were read than the size said.
//
// Timestamps come from the kernel's coarse clock unless the filesystem
// uses fine-grained timestamps, so two writes within one clock tick at the
// very start of hashing can go unseen; any later write is detected.
func (h *hasher) hashFile(f *os.File, withMD5 bool) (digest, error) {
	if h.count != nil {
		h.count()
	}
	fd := int(f.Fd())
	var before, after unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		return digest{}, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return digest{}, fmt.Errorf("hash %s: %w", f.Name(), errNotRegular)
	}
	bp := h.bufs.Get().(*[]byte)
	defer h.bufs.Put(bp)
	buf := *bp

	s := sha256.New()
	var m hash.Hash
	var w io.Writer = s
	if withMD5 {
		m = md5.New()
		w = io.MultiWriter(s, m)
	}
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		if n > 0 {
			w.Write(buf[:n]) // hash.Hash writes never fail
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return digest{}, fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
	if err := unix.Fstat(fd, &after); err != nil {
		return digest{}, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	if off != before.Size || before.Size != after.Size ||
		before.Mtim != after.Mtim || before.Ctim != after.Ctim ||
		before.Ino != after.Ino {
		return digest{}, fmt.Errorf("hash %s: %w", f.Name(), ErrChangedWhileHashing)
	}
	d := digest{key: keyOf(&after), size: off}
	s.Sum(d.sha256[:0])
	if m != nil {
		m.Sum(d.md5[:0])
	}
	return d, nil
}

// errNotRegular reports a path that is not a regular file.
var errNotRegular = errors.New("not a regular file")

// HashFile returns the SHA-256 of the open file f, read from offset 0
// without moving f's offset. It returns an error wrapping
// ErrChangedWhileHashing when the file was modified or replaced while it
// was read, and an error for anything that is not a regular file.
func HashFile(f *os.File) ([32]byte, error) {
	d, err := defaultHasher.hashFile(f, false)
	return d.sha256, err
}

// defaultHasher serves HashFile. It is the package's only variable that is
// not a sentinel: a sync.Pool of scratch buffers and no counter, so it
// carries no state any caller can observe, and it lets HashFile reuse its
// 1 MiB buffers like a Registry does.
var defaultHasher = newHasher(nil)

// hexDigest formats a SHA-256 digest as the lower-case hex used in rules.
func hexDigest(sum [32]byte) string { return hex.EncodeToString(sum[:]) }

// statKey returns the Key of the file at path, following symbolic links.
func statKey(path string) (Key, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Key{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return keyOf(&st), nil
}
