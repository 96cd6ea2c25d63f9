package proc

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path"
	"strconv"
	"strings"
)

// SandboxKind is the packaging a process was recognised as.
type SandboxKind string

// Sandbox kinds.
const (
	NotSandboxed SandboxKind = ""
	Flatpak      SandboxKind = "flatpak"
	Snap         SandboxKind = "snap"
	AppImage     SandboxKind = "appimage"
)

// Sandbox names the packaged app a process belongs to. It is a label for
// people; see the package documentation for what it does not prove.
type Sandbox struct {
	Kind SandboxKind
	// ID is stable across updates: the Flatpak app ID, the snap name
	// (with its instance key, e.g. firefox_beta), or the AppImage file path
	// from $APPIMAGE (empty when unknown).
	ID string
	// App is the snap application (firefox, or lxc in the lxd snap); empty
	// for the other kinds and when unknown.
	App string
	// Name is a short display name.
	Name string
	// Source says what the recognition rests on: "flatpak-info", "cgroup",
	// "exe" or "environ".
	Source string
}

// Sandbox recognises Flatpak, snap and AppImage processes. A process that
// is none of them gives the zero Sandbox and no error; one that does not
// exist gives [ErrGone]. Unreadable or malformed optional sources
// (.flatpak-info, environ) are skipped, so the next source decides.
func (fs FS) Sandbox(pid int) (Sandbox, error) {
	cgroups, err := fs.Cgroups(pid)
	if err != nil {
		return Sandbox{}, err
	}
	if b, err := os.ReadFile(fs.path(pid, "root/.flatpak-info")); err == nil {
		if id, ok := parseFlatpakInfo(b); ok {
			return flatpakSandbox(id, "flatpak-info"), nil
		}
	}
	for _, cg := range cgroups {
		if s, ok := sandboxFromCgroup(cg); ok {
			return s, nil
		}
	}
	exe, _, err := fs.ExePath(pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return Sandbox{}, nil // kernel thread or zombie: nothing more to learn
		}
		return Sandbox{}, err
	}
	if name, ok := snapFromExe(exe); ok {
		return Sandbox{Kind: Snap, ID: name, Name: name, Source: "exe"}, nil
	}
	env, _ := fs.Environ(pid)
	return appImageOf(exe, env), nil
}

func flatpakSandbox(id, source string) Sandbox {
	return Sandbox{Kind: Flatpak, ID: id, Name: id[strings.LastIndexByte(id, '.')+1:], Source: source}
}

// parseFlatpakInfo returns the app ID in a .flatpak-info key file: name= in
// [Application], else in [Runtime] (a sandbox running a bare runtime).
func parseFlatpakInfo(b []byte) (string, bool) {
	var section, app, runtime string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != "name" {
			continue
		}
		switch v = strings.TrimSpace(v); section {
		case "Application":
			app = v
		case "Runtime":
			runtime = v
		}
	}
	if validAppID(app) {
		return app, true
	}
	if app == "" && validAppID(runtime) {
		return runtime, true
	}
	return "", false
}

// validAppID checks the form Flatpak requires of an ID: at most 255 bytes,
// at least two dot-separated elements of [A-Za-z0-9_-], none starting with
// a digit.
func validAppID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	parts := strings.Split(id, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || (p[0] >= '0' && p[0] <= '9') {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}

// sandboxFromCgroup recognises the scopes Flatpak and snapd create:
// app-flatpak-<appid>-<n>.scope and snap.<snap>.<app>-<uuid>.scope (also
// snap.<snap>.<app>.<uuid>.scope and snap.<snap>.<app>.service). Unit
// names are systemd-escaped (a '-' in an app ID appears as \x2d).
func sandboxFromCgroup(cg string) (Sandbox, bool) {
	for _, c := range strings.Split(cg, "/") {
		c = unescapeUnit(c)
		if mid, ok := cutAffixes(c, "app-flatpak-", ".scope"); ok {
			i := strings.LastIndexByte(mid, '-')
			if i > 0 && isDigits(mid[i+1:]) && validAppID(mid[:i]) {
				return flatpakSandbox(mid[:i], "cgroup"), true
			}
		}
		mid, ok := cutAffixes(c, "snap.", ".scope")
		if !ok {
			mid, ok = cutAffixes(c, "snap.", ".service")
		}
		if !ok {
			continue
		}
		name, app, ok := strings.Cut(mid, ".")
		if !ok || !validSnapName(name) {
			continue
		}
		if len(app) > 37 && (app[len(app)-37] == '-' || app[len(app)-37] == '.') && isUUID(app[len(app)-36:]) {
			app = app[:len(app)-37]
		}
		if app == "" {
			continue
		}
		return snapSandbox(name, app, "cgroup"), true
	}
	return Sandbox{}, false
}

func snapSandbox(name, app, source string) Sandbox {
	display := name
	if app != "" && app != name {
		display = name + "." + app
	}
	return Sandbox{Kind: Snap, ID: name, App: app, Name: display, Source: source}
}

// snapFromExe recognises an executable under /snap/<name>/.
func snapFromExe(exe string) (string, bool) {
	rest, ok := strings.CutPrefix(exe, "/snap/")
	if !ok {
		return "", false
	}
	name, _, ok := strings.Cut(rest, "/")
	if !ok || name == "bin" || !validSnapName(name) {
		return "", false
	}
	return name, true
}

// validSnapName accepts snap names with an optional instance key:
// [a-z0-9-]+(_[a-z0-9]+)?.
func validSnapName(s string) bool {
	name, key, hasKey := strings.Cut(s, "_")
	if name == "" || (hasKey && key == "") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// appImageOf recognises an AppImage from its executable path and
// environment.
func appImageOf(exe string, env []string) Sandbox {
	appimage, _ := Getenv(env, "APPIMAGE")
	source := ""
	var mount string
	for _, c := range strings.Split(exe, "/") {
		if strings.HasPrefix(c, ".mount_") {
			mount, source = c, "exe"
			break
		}
	}
	if source == "" {
		appdir, ok := Getenv(env, "APPDIR")
		if appimage == "" || !ok || appdir == "" || appdir == "/" || !strings.HasPrefix(exe, strings.TrimSuffix(appdir, "/")+"/") {
			return Sandbox{}
		}
		source = "environ"
	}
	s := Sandbox{Kind: AppImage, Source: source}
	if appimage != "" {
		s.ID = appimage
		base := path.Base(appimage)
		if len(base) > len(".appimage") && strings.EqualFold(base[len(base)-len(".appimage"):], ".appimage") {
			base = base[:len(base)-len(".appimage")]
		}
		s.Name = base
		return s
	}
	// The runtime names its mount .mount_<first 6 bytes of the file
	// name><6 random characters>.
	prefix := strings.TrimPrefix(mount, ".mount_")
	if len(prefix) > 6 {
		prefix = prefix[:len(prefix)-6]
	}
	s.Name = prefix
	return s
}

func cutAffixes(s, prefix, suffix string) (string, bool) {
	if len(s) <= len(prefix)+len(suffix) || !strings.HasPrefix(s, prefix) || !strings.HasSuffix(s, suffix) {
		return "", false
	}
	return s[len(prefix) : len(s)-len(suffix)], true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isUUID reports whether s has the form 8-4-4-4-12 of hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// unescapeUnit undoes systemd's \xNN escaping in a unit name.
func unescapeUnit(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
