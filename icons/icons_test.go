package icons

import (
	"bytes"
	"flag"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the committed SVG files")

// TestSVGFilesMatchGeometry checks that the committed SVG files installed
// in the icon theme are what the geometry draws (-update rewrites them).
func TestSVGFilesMatchGeometry(t *testing.T) {
	for _, s := range States() {
		file := filepath.Join(".", s.Name()+".svg")
		want := SVG(s)
		if *update {
			if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (run go test ./icons -update)", err)
		}
		if diff := cmp.Diff(want, string(got)); diff != "" {
			t.Errorf("%s differs from the geometry (-want +got):\n%s", file, diff)
		}
	}
}

// TestPNG checks each rendering: the shield's colour at its centre-left,
// white glyph pixels, transparent corners, and distinct images per state.
func TestPNG(t *testing.T) {
	seen := map[string]State{}
	for _, s := range States() {
		b := PNG(s, 32)
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%v: decode: %v", s, err)
		}
		if got := img.Bounds().Dx(); got != 32 {
			t.Errorf("%v: width %d, want 32", s, got)
		}
		if _, _, _, a := img.At(0, 0).RGBA(); a != 0 {
			t.Errorf("%v: corner alpha %d, want transparent", s, a)
		}
		r, g, b8, a := img.At(6, 10).RGBA()
		c := s.Colour()
		if a>>8 != 0xff || r>>8 != uint32(c.R) || g>>8 != uint32(c.G) || b8>>8 != uint32(c.B) {
			t.Errorf("%v: shield pixel = %d,%d,%d,%d, want %v", s, r>>8, g>>8, b8>>8, a>>8, c)
		}
		white := 0
		for y := 0; y < 32; y++ {
			for x := 0; x < 32; x++ {
				if r, g, b, _ := img.At(x, y).RGBA(); r>>8 == 0xff && g>>8 == 0xff && b>>8 == 0xff {
					white++
				}
			}
		}
		if white < 10 {
			t.Errorf("%v: %d white glyph pixels, want a glyph", s, white)
		}
		if prev, ok := seen[string(b)]; ok {
			t.Errorf("%v renders like %v", s, prev)
		}
		seen[string(b)] = s
	}
}

func TestMarkPNG(t *testing.T) {
	for _, ok := range []bool{true, false} {
		img, err := png.Decode(bytes.NewReader(MarkPNG(ok, 16)))
		if err != nil {
			t.Fatal(err)
		}
		r, g, _, _ := img.At(8, 8).RGBA()
		if green := g > r; green != ok {
			t.Errorf("MarkPNG(%v): centre r=%d g=%d, want green=%v", ok, r>>8, g>>8, ok)
		}
	}
}

// BenchmarkPNG renders a 64 px tray icon and reports the cost as a ratio
// to PNG-encoding the finished image alone, measured in the same run.
func BenchmarkPNG(b *testing.B) {
	img := Image(Alert, 64)
	const baseRuns = 200
	b.StopTimer()
	t0 := time.Now()
	for range baseRuns {
		encode(img)
	}
	base := float64(time.Since(t0)) / baseRuns
	b.StartTimer()
	for b.Loop() {
		PNG(Alert, 64)
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/base, "x-encode")
}
