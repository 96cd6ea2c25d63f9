package proc

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/aegisfw/aegis/internal/testenv"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// live reads the running system's /proc.
var live = FS{}

// waitFor polls cond until it holds or a 10 s deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// start runs name with args, retrying while the binary is still open for
// writing somewhere (ETXTBSY: a copy just written can be held by a
// concurrent fork), and kills and reaps it at cleanup.
func start(t testing.TB, stdin io.Reader, name string, args ...string) *exec.Cmd {
	t.Helper()
	var cmd *exec.Cmd
	waitFor(t, "exec "+name, func() bool {
		cmd = exec.Command(name, args...)
		cmd.Stdin = stdin
		err := cmd.Start()
		if errors.Is(err, syscall.ETXTBSY) {
			return false
		}
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		return true
	})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// identity returns what the kernel would report for pid: the key of the
// running executable and a start time in ns at the end of its tick, so
// that only the integer division in OpenExe makes it match.
func identity(t testing.TB, pid int) (Key, uint64) {
	t.Helper()
	fi, err := os.Stat(live.path(pid, "exe"))
	if err != nil {
		t.Fatalf("stat exe of %d: %v", pid, err)
	}
	key, err := KeyOfFileInfo(fi)
	if err != nil {
		t.Fatal(err)
	}
	st, err := live.Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return key, st.StartTicks*nsPerTick + nsPerTick - 1
}

// copyFile copies src to a new executable file dst.
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func sha(t testing.TB, r io.Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func sleepPath(t testing.TB) string {
	t.Helper()
	p, err := filepath.EvalSymlinks(testenv.RequireTool(t, "sleep"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenExeMatchesRunningProcess(t *testing.T) {
	t.Parallel()
	bin := sleepPath(t)
	cmd := start(t, nil, bin, "60")
	pid := cmd.Process.Pid
	want, startNs := identity(t, pid)

	pathKey, err := StatKey(bin)
	if err != nil {
		t.Fatal(err)
	}
	if pathKey != want {
		t.Fatalf("StatKey(%s) = %v, key of /proc/%d/exe = %v", bin, pathKey, pid, want)
	}

	exe, err := live.OpenExe(uint32(pid), want, startNs)
	if err != nil {
		t.Fatalf("OpenExe(%d, %v, %d): %v", pid, want, startNs, err)
	}
	defer exe.Close()
	got := struct {
		Path    string
		Deleted bool
		Key     Key
		PID     int
	}{exe.Path, exe.Deleted, exe.Key, exe.Proc.PID}
	wantExe := struct {
		Path    string
		Deleted bool
		Key     Key
		PID     int
	}{bin, false, want, pid}
	if diff := cmp.Diff(wantExe, got); diff != "" {
		t.Errorf("OpenExe(%d) (-want +got):\n%s", pid, diff)
	}
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if sha(t, exe.File) != sha(t, f) {
		t.Errorf("the open executable does not hash like %s", bin)
	}
	flags, err := unix.FcntlInt(exe.File.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("executable fd flags = %#x, %v: want close-on-exec", flags, err)
	}
}

// TestOpenExeDeletedBinary: a binary removed while it runs is still the
// file the kernel reports; the path says so, and the fd hashes the
// original content.
func TestOpenExeDeletedBinary(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "sleeper")
	copyFile(t, sleepPath(t), bin)
	content, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	cmd := start(t, nil, bin, "60")
	before, _ := identity(t, cmd.Process.Pid)
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	// Unlinking changes the inode's ctime, so from now on the kernel
	// reports the new key for this process; the old one no longer matches.
	want, startNs := identity(t, cmd.Process.Pid)
	// (A file system with coarse timestamps may keep the same ctime.)
	if _, err := live.OpenExe(uint32(cmd.Process.Pid), before, startNs); want != before && !errors.Is(err, ErrMismatch) {
		t.Errorf("OpenExe with the key from before the unlink: error = %v, want ErrMismatch", err)
	}
	exe, err := live.OpenExe(uint32(cmd.Process.Pid), want, startNs)
	if err != nil {
		t.Fatalf("OpenExe of a deleted binary: %v", err)
	}
	defer exe.Close()
	if exe.Path != bin || !exe.Deleted {
		t.Errorf("OpenExe path = %q deleted = %v, want %q deleted = true", exe.Path, exe.Deleted, bin)
	}
	if sha(t, exe.File) != sha256.Sum256(content) {
		t.Errorf("the open executable does not hash like the deleted file")
	}
}

func TestOpenExeGone(t *testing.T) {
	t.Parallel()
	bin := sleepPath(t)

	t.Run("exited and reaped", func(t *testing.T) {
		t.Parallel()
		cmd := start(t, nil, bin, "60")
		pid := cmd.Process.Pid
		key, startNs := identity(t, pid)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_, err := live.OpenExe(uint32(pid), key, startNs)
		if !errors.Is(err, ErrGone) || errors.Is(err, ErrMismatch) {
			t.Errorf("OpenExe of an exited process: error = %v, want ErrGone", err)
		}
	})

	t.Run("zombie", func(t *testing.T) {
		t.Parallel()
		cmd := start(t, nil, bin, "60")
		pid := cmd.Process.Pid
		key, startNs := identity(t, pid)
		// Kill without reaping: the process stays a zombie until Wait.
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "zombie state", func() bool {
			st, err := live.Stat(pid)
			return err == nil && st.State == "Z"
		})
		_, err := live.OpenExe(uint32(pid), key, startNs)
		if !errors.Is(err, ErrGone) {
			t.Errorf("OpenExe of a zombie: error = %v, want ErrGone", err)
		}
	})

	t.Run("invalid pid", func(t *testing.T) {
		t.Parallel()
		for _, pid := range []uint32{0, 1<<22 + 1} {
			if _, err := live.OpenExe(pid, Key{}, 0); err == nil {
				t.Errorf("OpenExe(%d) succeeded", pid)
			}
		}
	})
}

func TestOpenExeMismatch(t *testing.T) {
	t.Parallel()
	bin := sleepPath(t)
	cmd := start(t, nil, bin, "60")
	pid := uint32(cmd.Process.Pid)
	key, startNs := identity(t, cmd.Process.Pid)
	ticks := TicksFromNs(startNs)

	tests := []struct {
		name      string
		key       Key
		startNs   uint64
		wantField string
	}{
		{"other inode", Key{Ino: key.Ino + 1, CtimeNs: key.CtimeNs, Dev: key.Dev}, startNs, "ino"},
		{"other ctime", Key{Ino: key.Ino, CtimeNs: key.CtimeNs + 1, Dev: key.Dev}, startNs, "ctime_ns"},
		{"other device", Key{Ino: key.Ino, CtimeNs: key.CtimeNs, Dev: key.Dev + 1}, startNs, "dev"},
		{"started one tick later (PID reused)", key, (ticks + 1) * nsPerTick, "start_ticks"},
		{"started one ns before the tick", key, ticks*nsPerTick - 1, "start_ticks"},
		{"start time zero", key, 0, "start_ticks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exe, err := live.OpenExe(pid, tt.key, tt.startNs)
			if exe != nil {
				exe.Close()
				t.Fatalf("OpenExe(%d, %v, %d) succeeded", pid, tt.key, tt.startNs)
			}
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrMismatch) || errors.Is(err, ErrGone) {
				t.Fatalf("OpenExe error = %v, want a *MismatchError matching ErrMismatch", err)
			}
			if me.Field != tt.wantField || me.TGID != pid {
				t.Errorf("MismatchError = %+v, want field %q for pid %d", me, tt.wantField, pid)
			}
		})
	}

	// Sanity: the identity itself matches at both ends of the tick.
	for _, ns := range []uint64{ticks * nsPerTick, startNs} {
		exe, err := live.OpenExe(pid, key, ns)
		if err != nil {
			t.Fatalf("OpenExe(%d, %v, %d): %v", pid, key, ns, err)
		}
		exe.Close()
	}
}

// TestOpenExeCopiedBinary runs a copy of a binary and checks it against
// the key of the original: same bytes, other file, so no match.
func TestOpenExeCopiedBinary(t *testing.T) {
	t.Parallel()
	orig := sleepPath(t)
	origKey, err := StatKey(orig)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "sleep")
	copyFile(t, orig, cp)
	cmd := start(t, nil, cp, "60")
	_, startNs := identity(t, cmd.Process.Pid)
	_, err = live.OpenExe(uint32(cmd.Process.Pid), origKey, startNs)
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("OpenExe of a copy against the original's key: error = %v, want ErrMismatch", err)
	}
}

// TestOpenExeBinaryModifiedInPlace records the key of a binary, appends a
// byte to it (same inode, new ctime), runs it and checks it against the
// recorded key.
func TestOpenExeBinaryModifiedInPlace(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "sleep")
	copyFile(t, sleepPath(t), bin)
	before, err := StatKey(bin)
	if err != nil {
		t.Fatal(err)
	}
	// Append until the ctime moves on (file systems with coarse
	// timestamps need a clock tick).
	waitFor(t, "ctime change", func() bool {
		f, err := os.OpenFile(bin, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		after, err := StatKey(bin)
		if err != nil {
			t.Fatal(err)
		}
		return after.CtimeNs != before.CtimeNs
	})
	cmd := start(t, nil, bin, "60")
	now, startNs := identity(t, cmd.Process.Pid)
	if now.Ino != before.Ino {
		t.Fatalf("inode changed from %d to %d: not an in-place change", before.Ino, now.Ino)
	}
	_, err = live.OpenExe(uint32(cmd.Process.Pid), before, startNs)
	var me *MismatchError
	if !errors.As(err, &me) || me.Field != "ctime_ns" {
		t.Errorf("OpenExe with the key from before the change: error = %v, want a ctime_ns mismatch", err)
	}
	exe, err := live.OpenExe(uint32(cmd.Process.Pid), now, startNs)
	if err != nil {
		t.Fatalf("OpenExe with the current key: %v", err)
	}
	exe.Close()
}

// TestOpenExeAfterExec: the kernel saw a shell; by the time the event is
// checked the process has exec'd sleep. Same PID, same start time, other
// executable: a mismatch, never the shell's verdict applied to sleep.
func TestOpenExeAfterExec(t *testing.T) {
	t.Parallel()
	sh := testenv.RequireTool(t, "sh")
	bin := sleepPath(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := start(t, r, sh, "-c", "read x; exec "+bin+" 60")
	r.Close()
	pid := cmd.Process.Pid
	shKey, startNs := identity(t, pid)
	sleepKey, err := StatKey(bin)
	if err != nil {
		t.Fatal(err)
	}
	if shKey == sleepKey {
		t.Fatalf("sh and sleep have the same key %v", shKey)
	}
	if _, err := w.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "exec of sleep", func() bool {
		k, _ := identity(t, pid)
		return k == sleepKey
	})

	_, err = live.OpenExe(uint32(pid), shKey, startNs)
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("OpenExe with the shell's key after exec: error = %v, want ErrMismatch", err)
	}
	// exec keeps the PID and the start time: the new key matches.
	exe, err := live.OpenExe(uint32(pid), sleepKey, startNs)
	if err != nil {
		t.Fatalf("OpenExe with sleep's key after exec: %v", err)
	}
	exe.Close()
}

// TestStartTicksAreBootBased checks the clock of field 22: a process
// forked between two CLOCK_BOOTTIME readings has a start time between
// them.
func TestStartTicksAreBootBased(t *testing.T) {
	t.Parallel()
	boottime := func() uint64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
			t.Fatal(err)
		}
		return uint64(ts.Nano())
	}
	before := boottime()
	cmd := start(t, nil, sleepPath(t), "60")
	after := boottime()
	st, err := live.Stat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.StartTicks < TicksFromNs(before) || st.StartTicks > TicksFromNs(after) {
		t.Errorf("start ticks %d outside [%d, %d] (CLOCK_BOOTTIME around the fork)", st.StartTicks, TicksFromNs(before), TicksFromNs(after))
	}
}

func TestLiveLineage(t *testing.T) {
	t.Parallel()
	cmd := start(t, nil, sleepPath(t), "60")
	chain, err := live.Lineage(cmd.Process.Pid)
	if err != nil {
		t.Fatalf("Lineage(%d): %v", cmd.Process.Pid, err)
	}
	if len(chain) < 2 || chain[0].PID != cmd.Process.Pid || chain[1].PID != os.Getpid() {
		t.Fatalf("Lineage(%d) = %v, want sleep then this test (%d)", cmd.Process.Pid, chain, os.Getpid())
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].Exe != sleepPath(t) || chain[1].Exe != self || chain[0].UID != uint32(os.Getuid()) {
		t.Errorf("Lineage exes = %q, %q uid %d, want %q, %q uid %d", chain[0].Exe, chain[1].Exe, chain[0].UID, sleepPath(t), self, os.Getuid())
	}
	if diff := cmp.Diff([]string{sleepPath(t), "60"}, chain[0].Cmdline); diff != "" {
		t.Errorf("Cmdline (-want +got):\n%s", diff)
	}
	for i := 1; i < len(chain); i++ {
		if chain[i].PID != chain[i-1].PPID {
			t.Errorf("chain[%d] = %v is not the parent of %v", i, chain[i], chain[i-1])
		}
	}
}

func TestKeyOf(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	fromFI, err := KeyOfFileInfo(fi)
	if err != nil {
		t.Fatal(err)
	}
	want := Key{
		Ino:     st.Ino,
		CtimeNs: uint64(st.Ctim.Sec)*1_000_000_000 + uint64(st.Ctim.Nsec),
		Dev:     unix.Major(st.Dev)<<20 | unix.Minor(st.Dev),
	}
	if diff := cmp.Diff(want, KeyOf(&st)); diff != "" {
		t.Errorf("KeyOf (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, fromFI); diff != "" {
		t.Errorf("KeyOfFileInfo (-want +got):\n%s", diff)
	}
	if _, err := StatKey(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("StatKey(missing) error = %v, want ErrNotExist", err)
	}
	k := Key{Ino: 5, CtimeNs: 7, Dev: 254<<20 | 3}
	if s := k.String(); s != "ino=5 dev=254:3 ctime_ns=7" {
		t.Errorf("Key.String() = %q", s)
	}
}

// BenchmarkOpenExe measures OpenExe plus Close on a live process against a
// baseline measured in the same loop: opening /proc/<pid>/exe, fstat and
// close, the least any verification does.
func BenchmarkOpenExe(b *testing.B) {
	cmd := start(b, nil, sleepPath(b), "600")
	pid := cmd.Process.Pid
	key, startNs := identity(b, pid)
	exePath := "/proc/" + strconv.Itoa(pid) + "/exe"
	var base, full time.Duration
	var st unix.Stat_t
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		f, err := os.Open(exePath)
		if err != nil {
			b.Fatal(err)
		}
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			b.Fatal(err)
		}
		f.Close()
		t1 := time.Now()
		exe, err := live.OpenExe(uint32(pid), key, startNs)
		if err != nil {
			b.Fatal(err)
		}
		exe.Close()
		t2 := time.Now()
		base += t1.Sub(t0)
		full += t2.Sub(t1)
	}
	b.StopTimer()
	b.ReportMetric(float64(full.Nanoseconds())/float64(b.N), "ns/openexe")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "ns/open+fstat")
	b.ReportMetric(float64(full)/float64(base), "x-baseline")
}
