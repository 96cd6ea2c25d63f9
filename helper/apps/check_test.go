package apps

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/rules"
)

func TestCheckCachesByKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "true")
	a := app(path, copyFile(t, "/bin/true", path))
	r := newRegistry(t, Config{}, a)

	f, key := openKey(t, path)
	want := Result{SHA256: a.SHA256, Path: path, Apps: []rules.App{a}}
	got, err := r.Check(key, f)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("first Check (-want +got):\n%s", diff)
	}
	hashes := r.Stats().Hashes
	got, err = r.Check(key, f)
	if err != nil {
		t.Fatalf("second Check: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("second Check (-want +got):\n%s", diff)
	}
	st := r.Stats()
	if st.Hashes != hashes || st.CacheHits != 1 || st.CacheMisses != 1 {
		t.Errorf("after two checks: %+v, want no new hash (%d), 1 hit, 1 miss", st, hashes)
	}
}

func TestCheckCacheInvalidatedOnChange(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app")
	a := app(path, writeExe(t, path, "v1\n"))
	r := newRegistry(t, Config{}, a)
	f, key := openKey(t, path)
	if res, err := r.Check(key, f); err != nil || !res.Known() {
		t.Fatalf("Check = %+v, %v; want known", res, err)
	}
	if n := r.Stats().CacheEntries; n != 1 {
		t.Fatalf("cache entries = %d, want 1", n)
	}

	writeExe(t, path, "v2, rewritten in place\n")
	waitEvent(t, r, path, func(ev HashChanged) bool { return ev.New == Changed })
	if n := r.Stats().CacheEntries; n != 0 {
		t.Errorf("cache entries after the file changed = %d, want 0", n)
	}
	f2, key2 := openKey(t, path)
	hashes := r.Stats().Hashes
	got, err := r.Check(key2, f2)
	if err != nil {
		t.Fatalf("Check after change: %v", err)
	}
	want := Result{SHA256: sumHex("v2, rewritten in place\n"), Path: path}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check after change (-want +got):\n%s", diff)
	}
	if r.Stats().Hashes != hashes+1 {
		t.Errorf("Check after change did not hash the new content")
	}

	// Rehash trusts the new content and drops cached results.
	if _, err := r.Rehash(path); err != nil {
		t.Fatal(err)
	}
	got, err = r.Check(key2, f2)
	if err != nil || !got.Known() {
		t.Errorf("Check after Rehash = %+v, %v; want known", got, err)
	}
}

func TestCheckCopyIsNotTrusted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, cp := filepath.Join(dir, "true"), filepath.Join(dir, "elsewhere", "true")
	sum := copyFile(t, "/bin/true", path)
	copyFile(t, path, mkdirFor(t, cp))
	r := newRegistry(t, Config{}, app(path, sum))

	f, key := openKey(t, cp)
	got, err := r.Check(key, f)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{SHA256: sum, Copies: []string{path}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check(copy) (-want +got):\n%s", diff)
	}
	if got.Known() {
		t.Errorf("a copy at %s is trusted, want unknown", cp)
	}
}

func TestCheckKeyMismatch(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app")
	r := newRegistry(t, Config{}, app(path, writeExe(t, path, "x\n")))
	f, key := openKey(t, path)
	for _, k := range []Key{
		{Ino: key.Ino + 1, CtimeNs: key.CtimeNs, Dev: key.Dev},
		{Ino: key.Ino, CtimeNs: key.CtimeNs + 1, Dev: key.Dev},
		{Ino: key.Ino, CtimeNs: key.CtimeNs, Dev: key.Dev + 1},
	} {
		if _, err := r.Check(k, f); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("Check(%+v) for a file with key %+v = %v, want ErrKeyMismatch", k, key, err)
		}
	}
	if st := r.Stats(); st.CacheEntries != 0 || st.CacheMisses != 0 {
		t.Errorf("a mismatched key touched the cache: %+v", st)
	}
}

// TestCheckRunningProcess verifies a real process through its
// /proc/<pid>/exe, the way the helper does.
func TestCheckRunningProcess(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sleep")
	a := app(path, copyFile(t, "/bin/sleep", path))
	r := newRegistry(t, Config{}, a)

	cmd := exec.Command(path, "60")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	f, key := openKey(t, fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	got, err := r.Check(key, f)
	if err != nil {
		t.Fatal(err)
	}
	want := Result{SHA256: a.SHA256, Path: path, Apps: []rules.App{a}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check(/proc/%d/exe) (-want +got):\n%s", cmd.Process.Pid, diff)
	}
}

// TestKeyMatchesKernel compares FileKey of the test binary with the
// device and inode the kernel prints for its mapping in /proc/self/maps,
// which uses the kernel's major:minor split.
func TestKeyMatchesKernel(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, key := openKey(t, exe)
	_ = f
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	s := bufio.NewScanner(maps)
	for s.Scan() {
		// address perms offset dev inode path
		fs := strings.Fields(s.Text())
		if len(fs) < 6 || fs[5] != exe {
			continue
		}
		maj, min, _ := strings.Cut(fs[3], ":")
		ma, _ := strconv.ParseUint(maj, 16, 32)
		mi, _ := strconv.ParseUint(min, 16, 32)
		ino, _ := strconv.ParseUint(fs[4], 10, 64)
		want := uint32(ma)<<20 | uint32(mi)
		if key.Dev != want || key.Ino != ino {
			t.Errorf("FileKey(%s) = dev %#x ino %d, kernel maps dev %s (%#x) ino %d", exe, key.Dev, key.Ino, fs[3], want, ino)
		}
		return
	}
	t.Fatalf("%s not found in /proc/self/maps", exe)
}

func TestCheckCacheBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := newRegistry(t, Config{CacheSize: 2})
	var keys []Key
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		writeExe(t, p, fmt.Sprintf("file %d\n", i))
		f, k := openKey(t, p)
		if _, err := r.Check(k, f); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if n := r.Stats().CacheEntries; n != 2 {
		t.Errorf("cache entries with CacheSize 2 after 3 files = %d, want 2", n)
	}
	// The least recently used (the first) was evicted: checking it hashes.
	h := r.Stats().Hashes
	f, _ := openKey(t, filepath.Join(dir, "f0"))
	if _, err := r.Check(keys[0], f); err != nil {
		t.Fatal(err)
	}
	if r.Stats().Hashes != h+1 {
		t.Errorf("Check of an evicted entry did not hash")
	}
}

// TestCheckAfterRuleChange checks that registering an app makes a cached
// "unknown" result for its file go away.
func TestCheckAfterRuleChange(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "tool")
	a := app(p, writeExe(t, p, "tool\n"))
	r := newRegistry(t, Config{})
	f, k := openKey(t, p)
	if res, err := r.Check(k, f); err != nil || res.Known() {
		t.Fatalf("Check before registering = %+v, %v; want unknown", res, err)
	}
	if err := r.Set(a); err != nil {
		t.Fatal(err)
	}
	if res, err := r.Check(k, f); err != nil || !res.Known() {
		t.Errorf("Check after Set = %+v, %v; want known", res, err)
	}
	r.Remove(p, a.UID)
	if res, err := r.Check(k, f); err != nil || res.Known() {
		t.Errorf("Check after Remove = %+v, %v; want unknown", res, err)
	}
}
