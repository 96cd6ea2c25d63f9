// Package icons draws Aegis's icons (the tray states and the menu marks)
// from one geometry, as SVG for the icon theme and as PNG for the tray.
package icons

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"strings"
)

// State is what the tray icon shows.
type State int

// Tray icon states.
const (
	// Enforcing: the helper runs and holds unknown apps (green shield, check).
	Enforcing State = iota
	// Learning: unknown apps pass and are recorded (blue shield, eye).
	Learning
	// Alert: the rules were tampered with or an app's binary changed (red
	// shield, exclamation mark).
	Alert
	// Disconnected: the helper is unreachable (grey shield, cross).
	Disconnected
)

// States lists every State in order.
func States() []State { return []State{Enforcing, Learning, Alert, Disconnected} }

// String returns the state's name, as used in icon names.
func (s State) String() string {
	switch s {
	case Enforcing:
		return "enforcing"
	case Learning:
		return "learning"
	case Alert:
		return "alert"
	case Disconnected:
		return "disconnected"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Name returns the icon theme name of s, e.g. "aegis-enforcing".
func (s State) Name() string { return "aegis-" + s.String() }

// Colour returns the shield colour of s.
func (s State) Colour() color.RGBA {
	switch s {
	case Enforcing:
		return color.RGBA{0x2e, 0x7d, 0x32, 0xff}
	case Learning:
		return color.RGBA{0x15, 0x65, 0xc0, 0xff}
	case Alert:
		return color.RGBA{0xc6, 0x28, 0x28, 0xff}
	}
	return color.RGBA{0x75, 0x75, 0x75, 0xff}
}

// viewBox is the side of the drawing's coordinate space.
const viewBox = 64

type point struct{ x, y float64 }

// shield returns the outline every tray icon fills.
func shield() []point {
	return []point{
		{32, 3}, {57, 11}, {57, 31}, {53, 44}, {45, 53}, {32, 61},
		{19, 53}, {11, 44}, {7, 31}, {7, 11},
	}
}

// A glyph part is drawn in white on the shield.
type part struct {
	line  []point // a polyline with round caps and joins, or
	ring  bool    // a circle outline (centre c, radius r), or
	dot   bool    // a filled circle (centre c, radius r)
	c     point
	r     float64
	width float64
}

func glyph(s State) []part {
	switch s {
	case Enforcing:
		return []part{{line: []point{{20, 33}, {29, 42}, {45, 23}}, width: 6}}
	case Learning:
		return []part{{ring: true, c: point{32, 31}, r: 10, width: 4}, {dot: true, c: point{32, 31}, r: 4}}
	case Alert:
		return []part{{line: []point{{32, 16}, {32, 35}}, width: 7}, {dot: true, c: point{32, 46}, r: 4}}
	}
	return []part{{line: []point{{22, 21}, {42, 41}}, width: 6}, {line: []point{{42, 21}, {22, 41}}, width: 6}}
}

// SVG returns the scalable icon of s.
func SVG(s State) string {
	var b strings.Builder
	c := s.Colour()
	fmt.Fprintf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", viewBox, viewBox, viewBox, viewBox)
	fmt.Fprintf(&b, "  <title>Aegis: %s</title>\n", s)
	fmt.Fprintf(&b, "  <path d=\"%s\" fill=\"#%02x%02x%02x\"/>\n", svgPath(shield()), c.R, c.G, c.B)
	for _, p := range glyph(s) {
		switch {
		case p.dot:
			fmt.Fprintf(&b, "  <circle cx=\"%g\" cy=\"%g\" r=\"%g\" fill=\"#ffffff\"/>\n", p.c.x, p.c.y, p.r)
		case p.ring:
			fmt.Fprintf(&b, "  <circle cx=\"%g\" cy=\"%g\" r=\"%g\" fill=\"none\" stroke=\"#ffffff\" stroke-width=\"%g\"/>\n", p.c.x, p.c.y, p.r, p.width)
		default:
			fmt.Fprintf(&b, "  <path d=\"%s\" fill=\"none\" stroke=\"#ffffff\" stroke-width=\"%g\" stroke-linecap=\"round\" stroke-linejoin=\"round\"/>\n", svgLine(p.line), p.width)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// svgPath returns a closed path through pts.
func svgPath(pts []point) string { return svgLine(pts) + " Z" }

// svgLine returns an open path through pts.
func svgLine(pts []point) string {
	var b strings.Builder
	for i, p := range pts {
		if i == 0 {
			b.WriteString("M")
		} else {
			b.WriteString(" L")
		}
		fmt.Fprintf(&b, "%g %g", p.x, p.y)
	}
	return b.String()
}

// Image renders the icon of s at size×size pixels, anti-aliased.
func Image(s State, size int) *image.RGBA {
	fill := s.Colour()
	outline := shield()
	parts := glyph(s)
	return render(size, func(x, y float64) (color.RGBA, bool) {
		if !inside(outline, x, y) {
			return color.RGBA{}, false
		}
		for _, p := range parts {
			if p.covers(x, y) {
				return color.RGBA{0xff, 0xff, 0xff, 0xff}, true
			}
		}
		return fill, true
	})
}

// PNG returns the icon of s as a size×size PNG.
func PNG(s State, size int) []byte { return encode(Image(s, size)) }

// MarkPNG returns a size×size PNG of a filled dot, green when ok and red
// otherwise: the mark of an app in the tray menu.
func MarkPNG(ok bool, size int) []byte {
	c := color.RGBA{0xc6, 0x28, 0x28, 0xff}
	if ok {
		c = color.RGBA{0x2e, 0x7d, 0x32, 0xff}
	}
	return encode(render(size, func(x, y float64) (color.RGBA, bool) {
		return c, math.Hypot(x-32, y-32) <= 22
	}))
}

func encode(img image.Image) []byte {
	var b bytes.Buffer
	// Encoding an in-memory RGBA image to a buffer cannot fail.
	_ = png.Encode(&b, img)
	return b.Bytes()
}

// render samples shade 4×4 times per pixel in viewBox coordinates and
// averages the covered samples into a premultiplied pixel.
func render(size int, shade func(x, y float64) (color.RGBA, bool)) *image.RGBA {
	const n = 4
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	scale := float64(viewBox) / float64(size)
	for py := 0; py < size; py++ {
		for px := 0; px < size; px++ {
			var r, g, b, a float64
			for sy := 0; sy < n; sy++ {
				for sx := 0; sx < n; sx++ {
					x := (float64(px) + (float64(sx)+0.5)/n) * scale
					y := (float64(py) + (float64(sy)+0.5)/n) * scale
					if c, ok := shade(x, y); ok {
						r += float64(c.R)
						g += float64(c.G)
						b += float64(c.B)
						a += 255
					}
				}
			}
			const k = n * n
			img.SetRGBA(px, py, color.RGBA{uint8(r/k + 0.5), uint8(g/k + 0.5), uint8(b/k + 0.5), uint8(a/k + 0.5)})
		}
	}
	return img
}

// inside reports whether (x, y) lies in the polygon (even-odd rule).
func inside(poly []point, x, y float64) bool {
	in := false
	for i, j := 0, len(poly)-1; i < len(poly); j, i = i, i+1 {
		a, b := poly[i], poly[j]
		if (a.y > y) != (b.y > y) && x < (b.x-a.x)*(y-a.y)/(b.y-a.y)+a.x {
			in = !in
		}
	}
	return in
}

func (p part) covers(x, y float64) bool {
	switch {
	case p.dot:
		return math.Hypot(x-p.c.x, y-p.c.y) <= p.r
	case p.ring:
		return math.Abs(math.Hypot(x-p.c.x, y-p.c.y)-p.r) <= p.width/2
	}
	for i := 1; i < len(p.line); i++ {
		if segmentDist(p.line[i-1], p.line[i], x, y) <= p.width/2 {
			return true
		}
	}
	return false
}

// segmentDist is the distance from (x, y) to the segment ab.
func segmentDist(a, b point, x, y float64) float64 {
	dx, dy := b.x-a.x, b.y-a.y
	t := 0.0
	if l := dx*dx + dy*dy; l > 0 {
		t = math.Max(0, math.Min(1, ((x-a.x)*dx+(y-a.y)*dy)/l))
	}
	return math.Hypot(x-(a.x+t*dx), y-(a.y+t*dy))
}
