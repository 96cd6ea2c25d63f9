package apps

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegisfw/aegis/internal/testenv"
)

// BenchmarkHashVsSha256sum hashes the same 64 MiB (8 files of 8 MiB, in
// the page cache) with HashFile and with sha256sum in each iteration and
// reports ratio = HashFile throughput / sha256sum throughput (goal >= 0.9).
func BenchmarkHashVsSha256sum(b *testing.B) {
	tool := testenv.RequireTool(b, "sha256sum")
	dir := b.TempDir()
	const files, size = 8, 8 << 20
	var paths []string
	data := make([]byte, size)
	for i := range files {
		rand.Read(data)
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
	}
	ours := func() []string {
		var sums []string
		for _, p := range paths {
			f, err := os.Open(p)
			if err != nil {
				b.Fatal(err)
			}
			s, err := HashFile(f)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			sums = append(sums, hexDigest(s))
		}
		return sums
	}
	theirs := func() []string {
		out, err := exec.Command(tool, paths...).Output()
		if err != nil {
			b.Fatalf("sha256sum: %v", err)
		}
		var sums []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			sums = append(sums, strings.Fields(l)[0])
		}
		return sums
	}
	// Same answers, and both runs start from a warm page cache.
	if a, c := ours(), theirs(); strings.Join(a, " ") != strings.Join(c, " ") {
		b.Fatalf("HashFile and sha256sum disagree:\n%v\n%v", a, c)
	}
	var tOurs, tTheirs time.Duration
	n := 0
	b.SetBytes(files * size)
	for b.Loop() {
		t0 := time.Now()
		ours()
		t1 := time.Now()
		theirs()
		tTheirs += time.Since(t1)
		tOurs += t1.Sub(t0)
		n++
	}
	mb := float64(n*files*size) / (1 << 20)
	b.ReportMetric(tTheirs.Seconds()/tOurs.Seconds(), "ratio")
	b.ReportMetric(mb/tOurs.Seconds(), "MiB/s-HashFile")
	b.ReportMetric(mb/tTheirs.Seconds(), "MiB/s-sha256sum")
}

// BenchmarkCheckCached measures a Check of an executable already verified:
// an fstat and a cache lookup (goal <= 5 µs), with no hashing.
func BenchmarkCheckCached(b *testing.B) {
	path := filepath.Join(b.TempDir(), "true")
	r := newRegistry(b, Config{Logger: slog.New(slog.DiscardHandler)}, app(path, copyFile(b, "/bin/true", path)))
	f, key := openKey(b, path)
	if res, err := r.Check(key, f); err != nil || !res.Known() {
		b.Fatalf("Check = %+v, %v", res, err)
	}
	h := r.Stats().Hashes
	for b.Loop() {
		if _, err := r.Check(key, f); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(r.Stats().Hashes-h)/float64(b.N), "hashes/op")
}

// BenchmarkChangeEvent measures the time from rewriting a registered file
// to its HashChanged event (goal < 1 s; the debounce is 50 ms).
func BenchmarkChangeEvent(b *testing.B) {
	path := filepath.Join(b.TempDir(), "app")
	r := newRegistry(b, Config{Logger: slog.New(slog.DiscardHandler)}, app(path, writeExe(b, path, "v0\n")))
	i := 0
	for b.Loop() {
		i++
		content := fmt.Sprintf("v%d\n", i)
		writeExe(b, path, content)
		waitEvent(b, r, path, func(ev HashChanged) bool { return ev.SHA256 == sumHex(content) })
	}
}
