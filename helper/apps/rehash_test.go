package apps

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/aegisfw/aegis/helper/rules"
	"github.com/aegisfw/aegis/internal/testenv"
)

// zeroSum is a well-formed digest no test file has.
var zeroSum = strings.Repeat("0", 64)

// fakeDpkg installs testdata/dpkg under a temporary root: file lists and
// checksums name files below root (@ROOT@, and @REL@ without the leading
// slash), and "@" in a fixture's file name stands for the ":" of a
// multi-arch package name, which Go module file names may not contain.
// It returns root, the info directory and the status file.
func fakeDpkg(t *testing.T) (root, info, status string) {
	t.Helper()
	base := t.TempDir()
	root, info = filepath.Join(base, "root"), filepath.Join(base, "info")
	if err := os.MkdirAll(info, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("testdata/dpkg/info")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("testdata/dpkg/info", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "@ROOT@", root)
		s = strings.ReplaceAll(s, "@REL@", strings.TrimPrefix(root, "/"))
		name := strings.ReplaceAll(e.Name(), "@", ":")
		if err := os.WriteFile(filepath.Join(info, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, info, "testdata/dpkg/status"
}

func TestRehashOrigin(t *testing.T) {
	t.Parallel()
	root, info, status := fakeDpkg(t)
	tests := []struct {
		file, content string
		want          Origin
	}{
		{"usr/bin/hello", "hello\n", Origin{Package: "hello", Version: "2.10-3", Verdict: PackageMatch}},
		{"usr/bin/tampered", "tampered\n", Origin{Package: "tampered", Version: "1.0-1", Verdict: PackageMismatch}},
		{"usr/lib/libfoo-tool", "libfoo-tool\n", Origin{Package: "libfoo:amd64", Version: "1.2-1", Verdict: PackageMatch}},
		{"usr/bin/nosums", "nosums\n", Origin{Package: "nosums", Version: "0.1", Verdict: PackageNoChecksum}},
		{"usr/bin/broken", "broken\n", Origin{Package: "broken", Version: "0.2", Verdict: PackageNoChecksum}},
		{"usr/bin/loose", "loose\n", Origin{Verdict: NotPackaged}},
	}
	var apps []rules.App
	for _, tt := range tests {
		p := filepath.Join(root, tt.file)
		writeExe(t, p, tt.content)
		apps = append(apps, app(p, zeroSum))
	}
	r := newRegistry(t, Config{DpkgInfoDir: info, DpkgStatus: status}, apps...)

	wantAll := make(map[string]Origin)
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			p := filepath.Join(root, tt.file)
			res, err := r.Rehash(p)
			if err != nil {
				t.Fatalf("Rehash(%s): %v", p, err)
			}
			if diff := cmp.Diff(tt.want, res.Origin); diff != "" {
				t.Errorf("Rehash(%s).Origin (-want +got):\n%s", p, diff)
			}
			wantApp := app(p, sumHex(tt.content))
			wantApp.Package = tt.want.Package
			if diff := cmp.Diff([]rules.App{wantApp}, res.Apps); diff != "" {
				t.Errorf("Rehash(%s).Apps (-want +got):\n%s", p, diff)
			}
			if res.Old != zeroSum || res.New != sumHex(tt.content) {
				t.Errorf("Rehash(%s) old %s new %s, want %s and %s", p, res.Old, res.New, zeroSum, sumHex(tt.content))
			}
		})
		wantAll[filepath.Join(root, tt.file)] = tt.want
	}

	// RehashAll reads the same database once and agrees.
	all, err := r.RehashAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	gotAll := make(map[string]Origin)
	for _, res := range all {
		if res.Err != nil {
			t.Errorf("RehashAll: %s: %v", res.Path, res.Err)
		}
		gotAll[res.Path] = res.Origin
	}
	if diff := cmp.Diff(wantAll, gotAll); diff != "" {
		t.Errorf("RehashAll origins (-want +got):\n%s", diff)
	}
}

func TestRehashWithoutDpkgDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	writeExe(t, p, "x\n")
	r := newRegistry(t, Config{DpkgInfoDir: filepath.Join(dir, "absent"), DpkgStatus: filepath.Join(dir, "absent-status")}, app(p, zeroSum))
	res, err := r.Rehash(p)
	if err != nil {
		t.Fatal(err)
	}
	if res.Origin != (Origin{Verdict: NotPackaged}) {
		t.Errorf("Rehash without a dpkg database: origin %+v, want not packaged", res.Origin)
	}
}

func TestRehashUnreadableDpkgDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	writeExe(t, p, "x\n")
	// An info "directory" that is a file is a broken database, not an
	// absent one: Rehash refuses and changes nothing.
	info := filepath.Join(dir, "info")
	writeExe(t, info, "not a directory\n")
	r := newRegistry(t, Config{DpkgInfoDir: info}, app(p, zeroSum))
	if _, err := r.Rehash(p); err == nil {
		t.Fatalf("Rehash with a broken dpkg info directory succeeded")
	}
	if got := r.Apps()[0].App.SHA256; got != zeroSum {
		t.Errorf("registered digest after a refused rehash = %s, want unchanged %s", got, zeroSum)
	}
}

func TestRehash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "app")
	old := writeExe(t, p, "v1\n")
	r := newRegistry(t, Config{}, app(p, old))

	renameOver(t, p, "v2\n")
	waitEvent(t, r, p, func(ev HashChanged) bool { return ev.New == Changed })
	res, err := r.Rehash(p)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := statKey(p)
	want := RehashResult{Path: p, Old: old, New: sumHex("v2\n"), Key: k, Origin: Origin{Verdict: NotPackaged}, Apps: []rules.App{app(p, sumHex("v2\n"))}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Rehash (-want +got):\n%s", diff)
	}
	waitEvent(t, r, p, func(ev HashChanged) bool { return ev.Old == Changed && ev.New == Valid })
	if got, _ := r.State(p); got != Valid {
		t.Errorf("State after Rehash = %v, want valid", got)
	}

	if _, err := r.Rehash(filepath.Join(dir, "unregistered")); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("Rehash(unregistered) = %v, want ErrNotRegistered", err)
	}
	os.Remove(p)
	if _, err := r.Rehash(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Rehash(removed file) = %v, want fs.ErrNotExist", err)
	}
	if got := r.Apps()[0]; got.State != Missing || got.App.SHA256 != sumHex("v2\n") {
		t.Errorf("after rehashing a removed file: %+v, want missing with the digest kept", got)
	}
}

// TestRehashRealDpkg asks the machine's own dpkg database about files it
// installed and cross-checks with dpkg-query.
func TestRehashRealDpkg(t *testing.T) {
	t.Parallel()
	dpkgQuery := testenv.RequireTool(t, "dpkg-query")
	if _, err := os.Stat(DefaultDpkgInfoDir); err != nil {
		testenv.Skip(t, "no dpkg database: "+err.Error())
	}
	paths := []string{"/usr/bin/dpkg", "/bin/ls", "/usr/bin/ls"}
	var apps []rules.App
	for _, p := range paths {
		apps = append(apps, app(p, zeroSum))
	}
	r := newRegistry(t, Config{DpkgInfoDir: DefaultDpkgInfoDir, DpkgStatus: DefaultDpkgStatus}, apps...)
	for _, p := range paths {
		res, err := r.Rehash(p)
		if err != nil {
			t.Fatalf("Rehash(%s): %v", p, err)
		}
		pkg := dpkgOwner(t, dpkgQuery, p)
		out, err := exec.Command(dpkgQuery, "-W", "-f=${Version}", pkg).Output()
		if err != nil {
			t.Fatalf("dpkg-query -W %s: %v", pkg, err)
		}
		want := Origin{Package: pkg, Version: string(out), Verdict: PackageMatch}
		if diff := cmp.Diff(want, res.Origin); diff != "" {
			t.Errorf("Rehash(%s).Origin (-want +got):\n%s", p, diff)
		}
	}
}

// dpkgOwner asks dpkg-query -S for the package of p or of its other name
// across the /usr merge.
func dpkgOwner(t *testing.T, dpkgQuery, p string) string {
	t.Helper()
	for _, name := range aliases(p) {
		out, err := exec.Command(dpkgQuery, "-S", name).Output()
		if err != nil {
			continue
		}
		pkg, _, ok := strings.Cut(strings.TrimSpace(string(out)), ": ")
		if ok && !strings.Contains(pkg, ",") && !strings.HasPrefix(pkg, "diversion") {
			return pkg
		}
	}
	t.Fatalf("dpkg-query -S knows no package for %s", p)
	return ""
}

// TestRehashAll2000 rehashes 2,000 registered files spread over 20
// directories.
func TestRehashAll2000(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var apps []rules.App
	for i := range 2000 {
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("bin%04d", i))
		apps = append(apps, app(p, writeExe(t, p, fmt.Sprintf("binary %d\n", i))))
	}
	r := newRegistry(t, Config{}, apps...)
	h := r.Stats().Hashes
	res, err := r.RehashAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2000 {
		t.Fatalf("RehashAll returned %d results, want 2000", len(res))
	}
	if got := r.Stats().Hashes - h; got != 2000 {
		t.Errorf("RehashAll hashed %d files, want 2000", got)
	}
	for i, x := range res {
		if x.Err != nil || x.Old != x.New || x.Origin.Verdict != NotPackaged {
			t.Errorf("result %d: %+v, want unchanged and not packaged", i, x)
		}
		if i > 0 && res[i-1].Path >= x.Path {
			t.Errorf("results not sorted by path at %d: %s then %s", i, res[i-1].Path, x.Path)
		}
	}
}

// TestRehashAllBoundedMemory rehashes 64 MiB of files and checks that the
// heap allocated meanwhile is a small fraction of it: files are streamed
// through reused buffers, never loaded whole.
func TestRehashAllBoundedMemory(t *testing.T) {
	dir := t.TempDir()
	var apps []rules.App
	data := make([]byte, 16<<20)
	for i := range 4 {
		data[0] = byte(i)
		p := filepath.Join(dir, fmt.Sprintf("big%d", i))
		apps = append(apps, app(p, writeExe(t, p, string(data))))
	}
	r := newRegistry(t, Config{}, apps...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := r.RehashAll(context.Background())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range res {
		if x.Err != nil {
			t.Errorf("%s: %v", x.Path, x.Err)
		}
	}
	limit := uint64(r.cfg.Workers+2) * bufSize
	if got := after.TotalAlloc - before.TotalAlloc; got > limit {
		t.Errorf("RehashAll of 64 MiB allocated %d bytes, want at most %d (one buffer per worker)", got, limit)
	}
}

func TestRehashAllCancelled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "x")
	r := newRegistry(t, Config{}, app(p, writeExe(t, p, "x\n")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := r.RehashAll(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("RehashAll(cancelled) = %v, want context.Canceled", err)
	}
	if len(res) != 1 || !errors.Is(res[0].Err, context.Canceled) {
		t.Errorf("results = %+v, want one cancelled result", res)
	}
}

func TestOriginString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		o    Origin
		want string
	}{
		{Origin{Verdict: NotPackaged}, "not from any package"},
		{Origin{Package: "coreutils", Version: "9.1-1", Verdict: PackageMatch}, "updated by package coreutils (9.1-1)"},
		{Origin{Package: "curl", Version: "7.88", Verdict: PackageMismatch}, "differs from the checksum of package curl (7.88)"},
		{Origin{Package: "x", Version: "1", Verdict: PackageNoChecksum}, "owned by package x (1), which recorded no checksum"},
	}
	for _, tt := range tests {
		if got := tt.o.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.o, got, tt.want)
		}
	}
}
