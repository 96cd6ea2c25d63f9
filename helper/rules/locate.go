package rules

import (
	"bufio"
	"bytes"
	"regexp"
	"strconv"
	"strings"
)

// The TOML decoder does not report where a key was defined, so errors
// found after decoding are placed by scanning the text for the field. The
// scan understands table headers, array-of-tables headers and plain or
// dotted keys, which covers how rule files are written; when it cannot
// find the field the line is 0 and the error still names the field.

var fieldRE = regexp.MustCompile(`^app\[(\d+)\](?:\.dest\[(\d+)\])?(?:\.([a-z_0-9]+))?$`)

// locate returns the line of a field as named in ParseError.Field.
func locate(data []byte, field string) int {
	if m := fieldRE.FindStringSubmatch(field); m != nil {
		// A key that is missing is placed at its table's header.
		ai, _ := strconv.Atoi(m[1])
		tbl, di := "app", -1
		if m[2] != "" {
			tbl = "app.dest"
			di, _ = strconv.Atoi(m[2])
		}
		if n := locateKey(data, tbl, ai, di, m[3]); n > 0 || m[3] == "" {
			return n
		}
		return locateKey(data, tbl, ai, di, "")
	}
	if i := strings.LastIndexByte(field, '.'); i >= 0 {
		return locateKey(data, field[:i], -1, -1, field[i+1:])
	}
	if field == "settings" {
		return locateKey(data, "settings", -1, -1, "")
	}
	return locateKey(data, "", -1, -1, field)
}

// locateKey returns the line of key in table tbl ("" for the root table,
// "app" or "app.dest" for arrays of tables). ai and di select the app and
// destination entry, -1 meaning any; an empty key asks for the table's
// header line.
func locateKey(data []byte, tbl string, ai, di int, key string) int {
	cur := ""
	app, dest := -1, -1
	inMulti := ""
	want := join(tbl, key)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, MaxSize+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if inMulti != "" {
			if strings.Contains(line, inMulti) {
				inMulti = ""
			}
			continue
		}
		match := func() bool {
			return (ai < 0 || app == ai) && (di < 0 || dest == di)
		}
		switch {
		case line == "" || line[0] == '#':
		case strings.HasPrefix(line, "[["):
			cur = headerName(line[2:], "]]")
			switch cur {
			case "app":
				app++
				dest = -1
			case "app.dest":
				dest++
			}
			if cur == want && (key == "" && match() || key != "" && ai < 0) {
				return n
			}
		case line[0] == '[':
			cur = headerName(line[1:], "]")
			if cur == want && key != "" || key == "" && cur == tbl {
				return n
			}
		default:
			eq := strings.IndexByte(line, '=')
			if eq < 0 {
				continue
			}
			k := unquoteKey(line[:eq])
			if key != "" && join(cur, k) == want && (cur == "" || match()) {
				return n
			}
			rest := line[eq+1:]
			for _, q := range []string{`"""`, `'''`} {
				if strings.Count(rest, q) == 1 {
					inMulti = q
				}
			}
		}
	}
	return 0
}

func join(tbl, key string) string {
	switch {
	case tbl == "":
		return key
	case key == "":
		return tbl
	}
	return tbl + "." + key
}

func headerName(s, end string) string {
	if i := strings.Index(s, end); i >= 0 {
		s = s[:i]
	}
	return unquoteKey(s)
}

// unquoteKey normalises a possibly dotted, possibly quoted key:
// ` "app" . dest ` becomes "app.dest".
func unquoteKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}
