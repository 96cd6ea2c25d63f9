package proc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Key is the kernel's identity of an executable: inode, ctime in
// nanoseconds and device of task->mm->exe_file, the device in the kernel's
// encoding (major<<20 | minor, as in i_sb->s_dev). The datapath converts the
// struct it shares with its eBPF programs into this type. Rewriting a binary
// in place changes CtimeNs; replacing it changes Ino. Unlinking a running
// binary (a package upgrade renames the new file over it) also changes
// CtimeNs, so processes still running the old file get a new key.
type Key struct {
	Ino     uint64
	CtimeNs uint64
	Dev     uint32
}

// KeyOf computes the key of a file from its stat data.
func KeyOf(st *unix.Stat_t) Key {
	return Key{
		Ino:     st.Ino,
		CtimeNs: uint64(st.Ctim.Sec)*1e9 + uint64(st.Ctim.Nsec),
		Dev:     unix.Major(st.Dev)<<20 | unix.Minor(st.Dev),
	}
}

// KeyOfFileInfo computes the key of a file from the result of os.Stat,
// os.Lstat or (*os.File).Stat.
func KeyOfFileInfo(fi os.FileInfo) (Key, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st == nil {
		return Key{}, fmt.Errorf("key of %s: no stat data", fi.Name())
	}
	return Key{
		Ino:     st.Ino,
		CtimeNs: uint64(st.Ctim.Sec)*1e9 + uint64(st.Ctim.Nsec),
		Dev:     unix.Major(st.Dev)<<20 | unix.Minor(st.Dev),
	}, nil
}

// StatKey computes the key of the file at path, following symlinks. It is
// meant for pre-warming caches at start-up. On btrfs, st_dev is a
// per-subvolume anonymous device that differs from the kernel's i_sb->s_dev,
// so a key computed from a path there never matches: prefer the key the
// kernel reported.
func StatKey(path string) (Key, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Key{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return KeyOf(&st), nil
}

// String formats k as "ino=N dev=MAJ:MIN ctime_ns=N".
func (k Key) String() string {
	return fmt.Sprintf("ino=%d dev=%d:%d ctime_ns=%d", k.Ino, k.Dev>>20, k.Dev&(1<<20-1), k.CtimeNs)
}

// LogValue renders k as a group for log/slog.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Uint64("ino", k.Ino),
		slog.String("dev", fmt.Sprintf("%d:%d", k.Dev>>20, k.Dev&(1<<20-1))),
		slog.Uint64("ctime_ns", k.CtimeNs),
	)
}

// ErrMismatch reports a process that is not the one the kernel described:
// its start time differs (the PID was reused) or it runs another executable
// (it exec'd, or the binary was rewritten or replaced).
var ErrMismatch = errors.New("process identity mismatch")

// MismatchError says which part of the identity differs. It matches
// [ErrMismatch] with errors.Is.
type MismatchError struct {
	TGID uint32
	// Field is "start_ticks", "ino", "ctime_ns" or "dev".
	Field     string
	Want, Got uint64
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("pid %d: %v: %s is %d, want %d", e.TGID, ErrMismatch, e.Field, e.Got, e.Want)
}

// Is reports whether target is [ErrMismatch].
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

// Exe is the verified, open executable of a running process.
type Exe struct {
	// File is open read-only on /proc/<tgid>/exe: the very file the process
	// runs, whatever happened to its path. Hash this, not the path.
	File *os.File
	// Path is the executable's path as the kernel prints it, without the
	// " (deleted)" suffix; Deleted says whether that suffix was there.
	Path    string
	Deleted bool
	// Key is the identity that matched, FileStat the full fstat data.
	Key      Key
	FileStat unix.Stat_t
	// Proc is /proc/<tgid>/stat as read during verification.
	Proc Stat
}

// Close closes the executable file.
func (e *Exe) Close() error { return e.File.Close() }

// OpenExe opens the executable of process tgid and verifies it against the
// kernel's description: its start time startNs (nanoseconds since boot on
// the clock /proc uses, task->start_boottime, compared in USER_HZ ticks) and
// the exe key want, checked with fstat on the open descriptor. A pidfd
// taken first proves the process stayed the same one until the check ended.
//
// Errors: [ErrGone] (with errors.Is) when the process exited, is a zombie or
// never existed; a [*MismatchError], matching [ErrMismatch], when the start
// time or the executable differs. Either way nothing is returned, so a
// connection is never attributed to another process. The caller must close
// the returned Exe.
//
// fs.Root must be the procfs of the caller's PID namespace.
func (fs FS) OpenExe(tgid uint32, want Key, startNs uint64) (*Exe, error) {
	if tgid == 0 || tgid > 1<<22 {
		return nil, fmt.Errorf("open exe: invalid pid %d", tgid)
	}
	pidfd, err := unix.PidfdOpen(int(tgid), 0)
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: pidfd_open: %w", tgid, goneErr(err))
	}
	defer unix.Close(pidfd)

	dirPath := filepath.Join(fs.root(), strconv.FormatUint(uint64(tgid), 10))
	dir, err := unix.Open(dirPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: %w", tgid, goneErr(&os.PathError{Op: "open", Path: dirPath, Err: err}))
	}
	defer unix.Close(dir)

	st, err := readStatAt(dir)
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: %w", tgid, err)
	}
	if err := checkAlive(tgid, st); err != nil {
		return nil, err
	}
	if wantTicks := TicksFromNs(startNs); st.StartTicks != wantTicks {
		return nil, &MismatchError{TGID: tgid, Field: "start_ticks", Want: wantTicks, Got: st.StartTicks}
	}

	fd, err := unix.Openat(dir, "exe", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: %w", tgid, goneErr(&os.PathError{Op: "open", Path: dirPath + "/exe", Err: err}))
	}
	exe := &Exe{File: os.NewFile(uintptr(fd), dirPath+"/exe"), Proc: st}
	ok := false
	defer func() {
		if !ok {
			exe.File.Close()
		}
	}()
	if err := unix.Fstat(fd, &exe.FileStat); err != nil {
		return nil, fmt.Errorf("open exe of pid %d: fstat: %w", tgid, err)
	}
	exe.Key = KeyOf(&exe.FileStat)
	for _, c := range []struct {
		field     string
		want, got uint64
	}{
		{"ino", want.Ino, exe.Key.Ino},
		{"ctime_ns", want.CtimeNs, exe.Key.CtimeNs},
		{"dev", uint64(want.Dev), uint64(exe.Key.Dev)},
	} {
		if c.want != c.got {
			return nil, &MismatchError{TGID: tgid, Field: c.field, Want: c.want, Got: c.got}
		}
	}
	target, err := readlinkAt(dir, "exe")
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: readlink: %w", tgid, goneErr(err))
	}
	exe.Path, exe.Deleted = splitDeleted(target)

	// The pidfd pins the process that held tgid before anything was read:
	// while it is alive the PID cannot be reused, so everything read through
	// dir belonged to it.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return nil, fmt.Errorf("open exe of pid %d: pidfd_send_signal: %w", tgid, goneErr(err))
	}
	again, err := readStatAt(dir)
	if err != nil {
		return nil, fmt.Errorf("open exe of pid %d: %w", tgid, err)
	}
	if err := checkAlive(tgid, again); err != nil {
		return nil, err
	}
	if again.StartTicks != st.StartTicks {
		return nil, fmt.Errorf("open exe of pid %d: start time changed during the check: %w", tgid, ErrGone)
	}
	ok = true
	return exe, nil
}

// checkAlive reports zombies and dead tasks as gone.
func checkAlive(tgid uint32, st Stat) error {
	if st.PID != int(tgid) {
		return fmt.Errorf("open exe of pid %d: stat names pid %d", tgid, st.PID)
	}
	if st.State == "Z" || st.State == "X" || st.State == "x" {
		return fmt.Errorf("open exe of pid %d: state %s: %w", tgid, st.State, ErrGone)
	}
	return nil
}

// readStatAt reads and parses the stat file in the /proc/<pid> directory dir.
func readStatAt(dir int) (Stat, error) {
	fd, err := unix.Openat(dir, "stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stat{}, goneErr(fmt.Errorf("open stat: %w", err))
	}
	defer unix.Close(fd)
	var buf [4096]byte
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Stat{}, goneErr(fmt.Errorf("read stat: %w", err))
		}
		if m == 0 {
			break
		}
		n += m
	}
	return ParseStat(buf[:n])
}

// readlinkAt reads the symlink name in directory dir.
func readlinkAt(dir int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dir, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
