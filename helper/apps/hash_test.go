package apps

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aegisfw/aegis/internal/testenv"
)

func TestHashFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"one buffer", bufSize},
		{"buffer and a bit", bufSize + 17},
		{"several buffers", 3*bufSize + 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.size)
			rand.Read(data)
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// HashFile reads from offset 0 and leaves the offset alone.
			if tt.size > 0 {
				if _, err := f.Read(make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := HashFile(f)
			if err != nil {
				t.Fatalf("HashFile: %v", err)
			}
			if want := sha256.Sum256(data); got != want {
				t.Errorf("HashFile(%d bytes) = %x, want %x", tt.size, got, want)
			}
			if off, _ := f.Seek(0, io.SeekCurrent); off != min(int64(tt.size), 1) {
				t.Errorf("offset after HashFile = %d, want %d", off, min(tt.size, 1))
			}
		})
	}
}

func TestHashFileMatchesSha256sum(t *testing.T) {
	t.Parallel()
	tool := testenv.RequireTool(t, "sha256sum")
	out, err := exec.Command(tool, "/bin/true").Output()
	if err != nil {
		t.Fatalf("sha256sum: %v", err)
	}
	f, err := os.Open("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := HashFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Fields(string(out))[0]; hexDigest(got) != want {
		t.Errorf("HashFile(/bin/true) = %s, sha256sum says %s", hexDigest(got), want)
	}
}

func TestHashFileRefusesNonRegular(t *testing.T) {
	t.Parallel()
	for _, p := range []string{t.TempDir(), "/dev/null"} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := HashFile(f); !errors.Is(err, errNotRegular) {
			t.Errorf("HashFile(%s) = %v, want a not-regular error", p, err)
		}
		f.Close()
	}
}

// TestHashFileChangedWhileHashing rewrites a 64 MiB file from another
// goroutine while it is hashed and expects the digest to be refused.
func TestHashFileChangedWhileHashing(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "big")
	data := make([]byte, 64<<20)
	rand.Read(data)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	stop, started, stopped := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		chunk := make([]byte, 64<<10)
		for i := 0; ; i++ {
			rand.Read(chunk)
			w.WriteAt(chunk, int64(i%1024)*int64(len(chunk)))
			if i == 0 {
				close(started)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	<-started
	defer func() { close(stop); <-stopped }()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Every attempt overlaps writes; the coarse timestamp clock could in
	// principle hide one, so a few attempts are allowed to find it.
	for range 10 {
		_, err := HashFile(f)
		if errors.Is(err, ErrChangedWhileHashing) {
			return
		}
		if err != nil {
			t.Fatalf("HashFile: %v", err)
		}
	}
	t.Fatalf("HashFile of a file rewritten throughout never returned ErrChangedWhileHashing")
}
