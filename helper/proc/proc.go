// Package proc reads process facts from /proc for a firewall that trusts
// executables, never PIDs: it verifies a process against the kernel's
// executable identity without races, walks its lineage, recognises
// interpreters and the script they run, and names sandboxed apps.
//
// # Identity
//
// [FS.OpenExe] takes what the kernel reported for a connection (thread-group
// id, exe [Key] and start time) and returns the open /proc/<tgid>/exe file
// only when all of it still holds. It opens a pidfd first, reads the start
// time and the executable through one /proc/<tgid> directory descriptor,
// compares inode, ctime and device of the open descriptor with the key, and
// finally checks through the pidfd that the process is still alive. A
// process that exited or became a zombie is reported as [ErrGone]; one whose
// start time or executable differs (PID reuse, exec, a binary rewritten or
// replaced) as [ErrMismatch]. The open file is exactly what the kernel
// mapped, even when the path was deleted or replaced since, so hashing it
// hashes what runs.
//
// The start time is compared in clock ticks (USER_HZ = 100) with field 22 of
// /proc/<tgid>/stat, which the kernel derives from the task's boot-based
// start time (task->start_boottime, CLOCK_BOOTTIME). The caller must pass
// that clock: task->start_time is CLOCK_MONOTONIC and equals it only until
// the machine first suspends.
//
// # Lineage and interpreters
//
// [FS.Lineage] lists a process and its ancestors, child first. It is
// informational: each /proc file is read separately, so it describes the
// chain as it was around the time of the call. A parent whose PID was
// reused (it started after its child) or that vanished ends the chain.
//
// [DetectInterpreter] marks python, node, perl, ruby, the shells (sh, bash,
// dash, zsh, fish), java, php and lua, and takes the script, module, jar,
// class or inline code from the command line. The command line is whatever
// the process put there: it is shown to people, never trusted; the hash
// covers the interpreter, not the script.
//
// # Sandboxed apps
//
// [FS.Sandbox] recognises:
//
//   - Flatpak: /proc/<pid>/root/.flatpak-info ([Application] name=, or
//     [Runtime] name= for a bare runtime), else a cgroup named
//     app-flatpak-<appid>-<n>.scope. ID is the app ID
//     (org.mozilla.firefox), Name its last dotted part.
//   - Snap: a cgroup named snap.<snap>.<app>-<uuid>.scope (also the older
//     snap.<snap>.<app>.<uuid>.scope and snap.<snap>.<app>.service), else an
//     executable under /snap/<snap>/. ID is the snap name, App the app, Name
//     "<snap>" or "<snap>.<app>" like the command snap installs.
//   - AppImage: an executable inside the runtime's mount (a path component
//     starting with ".mount_"), or under $APPDIR when $APPIMAGE is set in
//     the process's environment (extract-and-run). ID is $APPIMAGE, Name its
//     file name without the .AppImage suffix; without $APPIMAGE, ID is empty
//     and Name is the prefix the runtime put in the mount directory's name.
//
// Not covered, by design: these are labels for people, not identities to
// trust. A process of the same user can create a cgroup with a Flatpak or
// snap name, build a mount namespace with its own /.flatpak-info, or set
// $APPIMAGE to any file; an AppImage's ID names the file the process claims
// it came from. Processes inherit $APPIMAGE, so one that execs a program
// outside the AppImage is not labelled. Executable paths are as the kernel
// prints them and may not exist on the host (Flatpak's /app). Trust always
// rests on the hash of the open executable. Not recognised: Firejail,
// bubblewrap outside Flatpak, containers (Docker, Podman, LXC), Nix and
// Guix profiles.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// UserHZ is the unit of clock-tick fields in /proc (sysconf(_SC_CLK_TCK));
// the kernel fixes it at 100 on Linux.
const UserHZ = 100

// nsPerTick is the number of nanoseconds in one USER_HZ tick.
const nsPerTick = 1_000_000_000 / UserHZ

// TicksFromNs converts nanoseconds since boot to USER_HZ clock ticks the way
// the kernel does for /proc/<pid>/stat (truncating integer division).
func TicksFromNs(ns uint64) uint64 { return ns / nsPerTick }

// DefaultRoot is where procfs is mounted.
const DefaultRoot = "/proc"

// ErrGone reports a process that no longer exists, or is a zombie, so its
// facts cannot be read or trusted.
var ErrGone = errors.New("process gone")

// FS reads process facts from a procfs tree. The zero value reads /proc.
// Tests point Root at a snapshot under testdata/; [FS.OpenExe] needs the live
// procfs of the caller's PID namespace.
type FS struct {
	// Root is the procfs mount point; empty means [DefaultRoot].
	Root string
}

func (fs FS) root() string {
	if fs.Root == "" {
		return DefaultRoot
	}
	return fs.Root
}

// path returns the path of name in the directory of pid.
func (fs FS) path(pid int, name string) string {
	return filepath.Join(fs.root(), strconv.Itoa(pid), name)
}

// goneErr marks errors that mean the process has gone with ErrGone.
func goneErr(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", ErrGone, err)
	}
	return err
}

func (fs FS) read(pid int, name string) ([]byte, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("read %s of pid %d: invalid pid", name, pid)
	}
	b, err := os.ReadFile(fs.path(pid, name))
	if err != nil {
		return nil, goneErr(err)
	}
	return b, nil
}

// Stat is the part of /proc/<pid>/stat this package uses.
type Stat struct {
	PID int
	// Comm is the command name (at most 15 bytes, set by the process itself):
	// it may contain spaces, parentheses and any byte but NUL.
	Comm string
	// State is the one-letter process state (R, S, D, Z, T, t, X, I...).
	State      string
	PPID       int
	PGRP       int
	Session    int
	NumThreads int
	// StartTicks is the start time after boot in USER_HZ ticks (field 22).
	StartTicks uint64
}

// ParseStat parses the contents of /proc/<pid>/stat. The command name runs
// from the first '(' to the last ')', as the kernel prints it unescaped.
func ParseStat(b []byte) (Stat, error) {
	var st Stat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return st, errors.New("parse stat: no command name in parentheses")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil || pid <= 0 {
		return st, fmt.Errorf("parse stat: bad pid %q", string(b[:open]))
	}
	st.PID = pid
	st.Comm = string(b[open+1 : end])
	rest := b[end+1:]
	if len(rest) == 0 || rest[0] != ' ' {
		return st, errors.New("parse stat: no fields after command name")
	}
	// Fields after the command name, numbered from 3 (state) as in proc(5).
	f := strings.Fields(string(rest))
	const last = 22
	if len(f) < last-2 {
		return st, fmt.Errorf("parse stat: %d fields after command name, want at least %d", len(f), last-2)
	}
	field := func(n int) string { return f[n-3] }
	if len(field(3)) != 1 {
		return st, fmt.Errorf("parse stat: bad state %q", field(3))
	}
	st.State = field(3)
	ints := []struct {
		n   int
		dst *int
	}{{4, &st.PPID}, {5, &st.PGRP}, {6, &st.Session}, {20, &st.NumThreads}}
	for _, x := range ints {
		v, err := strconv.Atoi(field(x.n))
		if err != nil {
			return st, fmt.Errorf("parse stat: field %d: %w", x.n, err)
		}
		*x.dst = v
	}
	if st.PPID < 0 {
		return st, fmt.Errorf("parse stat: negative ppid %d", st.PPID)
	}
	st.StartTicks, err = strconv.ParseUint(field(22), 10, 64)
	if err != nil {
		return st, fmt.Errorf("parse stat: field 22: %w", err)
	}
	return st, nil
}

// Stat reads and parses /proc/<pid>/stat. A missing process is [ErrGone].
func (fs FS) Stat(pid int) (Stat, error) {
	b, err := fs.read(pid, "stat")
	if err != nil {
		return Stat{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}

// Status is the part of /proc/<pid>/status this package uses.
type Status struct {
	Name string
	TGID int
	PPID int
	// UID is the real user id, the owner of the process; EUID the effective.
	UID, EUID uint32
	GID, EGID uint32
}

// ParseStatus parses the contents of /proc/<pid>/status. The Uid and Gid
// lines are required.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	var haveUID, haveGID bool
	for line := range bytes.Lines(b) {
		key, val, ok := bytes.Cut(bytes.TrimRight(line, "\n"), []byte(":"))
		if !ok {
			continue
		}
		v := strings.TrimSpace(string(val))
		var err error
		switch string(key) {
		case "Name":
			s.Name = v
		case "Tgid":
			s.TGID, err = strconv.Atoi(v)
		case "PPid":
			s.PPID, err = strconv.Atoi(v)
		case "Uid":
			s.UID, s.EUID, err = idPair(v)
			haveUID = true
		case "Gid":
			s.GID, s.EGID, err = idPair(v)
			haveGID = true
		}
		if err != nil {
			return Status{}, fmt.Errorf("parse status: %s: %w", key, err)
		}
	}
	if !haveUID || !haveGID {
		return Status{}, errors.New("parse status: no Uid or Gid line")
	}
	return s, nil
}

// idPair parses the real and effective ids of a "Uid:" or "Gid:" line.
func idPair(v string) (real, effective uint32, err error) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return 0, 0, fmt.Errorf("want 4 ids, got %q", v)
	}
	r, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, 0, err
	}
	e, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, 0, err
	}
	return uint32(r), uint32(e), nil
}

// Status reads and parses /proc/<pid>/status.
func (fs FS) Status(pid int) (Status, error) {
	b, err := fs.read(pid, "status")
	if err != nil {
		return Status{}, err
	}
	s, err := ParseStatus(b)
	if err != nil {
		return Status{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// splitNUL splits NUL-separated strings, dropping the final terminator.
func splitNUL(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	b = bytes.TrimSuffix(b, []byte{0})
	return strings.Split(string(b), "\x00")
}

// Cmdline reads the arguments of pid. It is empty for kernel threads and
// zombies. A process may have rewritten it (setproctitle), so it is shown,
// never trusted.
func (fs FS) Cmdline(pid int) ([]string, error) {
	b, err := fs.read(pid, "cmdline")
	if err != nil {
		return nil, err
	}
	return splitNUL(b), nil
}

// Environ reads the environment pid was started with, as KEY=VALUE strings.
// Reading another user's process needs root (ptrace access).
func (fs FS) Environ(pid int) ([]string, error) {
	b, err := fs.read(pid, "environ")
	if err != nil {
		return nil, err
	}
	return splitNUL(b), nil
}

// Getenv returns the value of key in env (KEY=VALUE strings).
func Getenv(env []string, key string) (string, bool) {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// deletedSuffix is what the kernel appends to the path of an unlinked file.
const deletedSuffix = " (deleted)"

// splitDeleted strips the kernel's " (deleted)" suffix from a link target.
func splitDeleted(target string) (path string, deleted bool) {
	if p, ok := strings.CutSuffix(target, deletedSuffix); ok {
		return p, true
	}
	return target, false
}

// ExePath reads the /proc/<pid>/exe link: the executable's path as the
// kernel prints it, and whether the file has been deleted since it was
// started. Kernel threads and zombies have none: the error then matches
// fs.ErrNotExist (and [ErrGone]).
func (fs FS) ExePath(pid int) (path string, deleted bool, err error) {
	target, err := os.Readlink(fs.path(pid, "exe"))
	if err != nil {
		return "", false, goneErr(err)
	}
	path, deleted = splitDeleted(target)
	return path, deleted, nil
}

// Cgroups reads /proc/<pid>/cgroup and returns the cgroup path of every
// hierarchy line (the cgroup v2 path is the one of the "0::" line).
func (fs FS) Cgroups(pid int) ([]string, error) {
	b, err := fs.read(pid, "cgroup")
	if err != nil {
		return nil, err
	}
	var paths []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		// hierarchy-ID:controller-list:cgroup-path; the path may contain ':'.
		_, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		_, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		paths = append(paths, p)
	}
	return paths, nil
}
