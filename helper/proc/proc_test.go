package proc

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// snapshot reads the fake /proc tree under testdata/proc.
var snapshot = FS{Root: filepath.Join("testdata", "proc")}

func TestParseStat(t *testing.T) {
	t.Parallel()
	// tail is fields 4.. of a real stat line, with start time 5100.
	const tail = " 1300 1500 1500 34816 1500 4194560 1200 0 3 0 12 5 0 0 20 0 3 0 5100 10321920 1183 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
	tests := []struct {
		name string
		in   string
		want Stat
	}{
		{"plain command name", "1500 (bash) S" + tail,
			Stat{PID: 1500, Comm: "bash", State: "S", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"spaces and parentheses in the command name", "1500 (a) b (c) R" + tail,
			Stat{PID: 1500, Comm: "a) b (c", State: "R", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"command name ending in parentheses", "1500 (x)) S" + tail,
			Stat{PID: 1500, Comm: "x)", State: "S", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"command name made of a closing parenthesis and digits", "1500 () 1 2 3) S" + tail,
			Stat{PID: 1500, Comm: ") 1 2 3", State: "S", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"newline in the command name", "1500 (a\nb) S" + tail,
			Stat{PID: 1500, Comm: "a\nb", State: "S", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"empty command name", "1500 () Z" + tail,
			Stat{PID: 1500, Comm: "", State: "Z", PPID: 1300, PGRP: 1500, Session: 1500, NumThreads: 3, StartTicks: 5100}},
		{"fields up to start time only", "7 (k) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 0 -20 1 0 12",
			Stat{PID: 7, Comm: "k", State: "I", PPID: 2, NumThreads: 1, StartTicks: 12}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseStat(%q) error: %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseStat(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseStatRejectsMalformed(t *testing.T) {
	t.Parallel()
	const tail = " 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100"
	tests := []struct {
		name, in, wantErr string
	}{
		{"empty", "", "no command name"},
		{"no parentheses", "12 bash S" + tail, "no command name"},
		{"unclosed command name", "12 (bash S" + tail, "no command name"},
		{"closing before opening", "12 )bash( S" + tail, "no command name"},
		{"pid not a number", "x1 (bash) S" + tail, "bad pid"},
		{"pid zero", "0 (bash) S" + tail, "bad pid"},
		{"negative pid", "-4 (bash) S" + tail, "bad pid"},
		{"nothing after the name", "12 (bash)", "no fields"},
		{"no space after the name", "12 (bash)S" + tail, "no fields"},
		{"truncated before start time", "12 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0", "19 fields"},
		{"long state", "12 (bash) SS" + tail, "bad state"},
		{"ppid not a number", "12 (bash) S x 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100", "field 4"},
		{"negative ppid", "12 (bash) S -1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100", "negative ppid"},
		{"start time not a number", "12 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1e5", "field 22"},
		{"negative start time", "12 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5", "field 22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStat([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseStat(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

// FuzzParseStat checks that ParseStat never panics and that whatever it
// accepts is consistent with the line: the command name is what lies
// between the first '(' and the last ')', and printing the parsed fields
// back gives a line that parses to the same Stat.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1500 (a) b (c) R 1300 1500 1500 34816 1500 4194560 1200 0 3 0 12 5 0 0 20 0 1 0 5100 10321920\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err != nil {
			return
		}
		s := string(b)
		if want := s[strings.IndexByte(s, '(')+1 : strings.LastIndexByte(s, ')')]; st.Comm != want {
			t.Fatalf("ParseStat(%q).Comm = %q, want %q", b, st.Comm, want)
		}
		if st.PID <= 0 || st.PPID < 0 || len(st.State) != 1 {
			t.Fatalf("ParseStat(%q) = %+v: out of range", b, st)
		}
		line := strconv.Itoa(st.PID) + " (" + st.Comm + ") " + st.State + " " + strconv.Itoa(st.PPID) + " " +
			strconv.Itoa(st.PGRP) + " " + strconv.Itoa(st.Session) + " 0 0 0 0 0 0 0 0 0 0 0 0 0 " +
			strconv.Itoa(st.NumThreads) + " 0 " + strconv.FormatUint(st.StartTicks, 10)
		again, err := ParseStat([]byte(line))
		if err != nil {
			t.Fatalf("ParseStat(%q) (reprinted from %q): %v", line, b, err)
		}
		if diff := cmp.Diff(st, again); diff != "" {
			t.Fatalf("reparse of %q (-want +got):\n%s", line, diff)
		}
	})
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    Status
		wantErr string
	}{
		{name: "setuid process", in: "Name:\tpasswd\nTgid:\t42\nPid:\t42\nPPid:\t7\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n",
			want: Status{Name: "passwd", TGID: 42, PPID: 7, UID: 1000, EUID: 0, GID: 1000, EGID: 1000}},
		{name: "name with spaces", in: "Name:\tWeb Content\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n",
			want: Status{Name: "Web Content", UID: 1, EUID: 2, GID: 5, EGID: 6}},
		{name: "no Uid line", in: "Name:\tx\nGid:\t0\t0\t0\t0\n", wantErr: "no Uid or Gid"},
		{name: "short Uid line", in: "Uid:\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: "Uid: want 4 ids"},
		{name: "uid out of range", in: "Uid:\t4294967296\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: "Uid:"},
		{name: "bad PPid", in: "PPid:\tone\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: "PPid:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatus([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseStatus(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseStatus(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseStatus(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestProcessFromSnapshot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pid  int
		want Process
	}{
		{1, Process{PID: 1, UID: 0, Comm: "systemd", Exe: "/usr/lib/systemd/systemd", Cmdline: []string{"/sbin/init", "splash"}, StartTicks: 2}},
		{2, Process{PID: 2, Comm: "kthreadd", StartTicks: 2}},
		{1400, Process{PID: 1400, PPID: 1300, UID: 1000, Comm: "sync.py", Exe: "/usr/bin/python3.11",
			Cmdline: []string{"python3", "-u", "/home/alice/bin/sync.py", "--once"}, StartTicks: 5000,
			Interpreter: &Interpreter{Name: "python", Kind: ScriptFile, Script: "/home/alice/bin/sync.py"}}},
		{1500, Process{PID: 1500, PPID: 1300, UID: 1000, Comm: "a) b (c", Exe: "/home/alice/bin/weird", ExeDeleted: true,
			Cmdline: []string{"./weird", "-v"}, StartTicks: 5100}},
		{3700, Process{PID: 3700, PPID: 1300, UID: 1000, Comm: "defunct", StartTicks: 7700}},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.pid), func(t *testing.T) {
			got, err := snapshot.Process(tt.pid)
			if err != nil {
				t.Fatalf("Process(%d): %v", tt.pid, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Process(%d) (-want +got):\n%s", tt.pid, diff)
			}
		})
	}
}

func TestProcessErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		pid      int
		wantGone bool
		wantErr  string
	}{
		{"no such process", 2999, true, "process gone"},
		{"pid zero", 0, false, "invalid pid"},
		{"negative pid", -1, false, "invalid pid"},
		{"malformed stat", 3400, false, "pid 3400: parse stat"},
		{"status without Uid", 3600, false, "pid 3600: parse status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := snapshot.Process(tt.pid)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, ErrGone) != tt.wantGone {
				t.Errorf("Process(%d) error = %v, want one containing %q with errors.Is(ErrGone) = %v", tt.pid, err, tt.wantErr, tt.wantGone)
			}
		})
	}
}

func TestLineage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		pid  int
		want []int
		str  string
	}{
		{"python script up to init", 1400, []int{1400, 1300, 1200, 900, 1}, "systemd → gnome-shell → gnome-terminal- → bash → sync.py"},
		{"init alone", 1, []int{1}, "systemd"},
		{"kernel thread", 2, []int{2}, "kthreadd"},
		{"parent vanished", 3000, []int{3000}, "orphan"},
		{"parent pid reused by a newer process", 3100, []int{3100}, "child"},
		{"cycle", 3300, []int{3300, 3301}, "loop-b → loop-a"},
		{"zombie", 3700, []int{3700, 1300, 1200, 900, 1}, "systemd → gnome-shell → gnome-terminal- → bash → defunct"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := snapshot.Lineage(tt.pid)
			if err != nil {
				t.Fatalf("Lineage(%d): %v", tt.pid, err)
			}
			var got []int
			for _, p := range chain {
				got = append(got, p.PID)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Lineage(%d) pids (-want +got):\n%s", tt.pid, diff)
			}
			if s := FormatLineage(chain); s != tt.str {
				t.Errorf("FormatLineage(Lineage(%d)) = %q, want %q", tt.pid, s, tt.str)
			}
		})
	}
}

func TestLineageErrors(t *testing.T) {
	t.Parallel()
	if _, err := snapshot.Lineage(2999); !errors.Is(err, ErrGone) {
		t.Errorf("Lineage(2999) error = %v, want ErrGone", err)
	}
	// A malformed ancestor is an error, not a silently short chain.
	if _, err := snapshot.Lineage(3500); err == nil || !strings.Contains(err.Error(), "ancestor 3400") {
		t.Errorf("Lineage(3500) error = %v, want one naming ancestor 3400", err)
	}
}

// TestLineageIsBounded builds a chain of 100 processes and checks that the
// walk stops at MaxLineage.
func TestLineageIsBounded(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for pid := 1; pid <= 100; pid++ {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := strconv.Itoa(pid) + " (p" + strconv.Itoa(pid) + ") S " + strconv.Itoa(pid-1) + " 0 0 0 0 0 0 0 0 0 0 0 0 0 20 0 1 0 " + strconv.Itoa(pid) + "\n"
		for name, content := range map[string]string{
			"stat":    stat,
			"status":  "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n",
			"cmdline": "p\x00",
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	chain, err := FS{Root: root}.Lineage(100)
	if err != nil {
		t.Fatalf("Lineage(100): %v", err)
	}
	if len(chain) != MaxLineage || chain[0].PID != 100 || chain[MaxLineage-1].PID != 100-MaxLineage+1 {
		t.Errorf("Lineage(100) = %d processes from %v to %v, want %d from 100 to %d", len(chain), chain[0], chain[len(chain)-1], MaxLineage, 100-MaxLineage+1)
	}
}

func TestSandbox(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		pid  int
		want Sandbox
	}{
		{"flatpak from .flatpak-info", 2000, Sandbox{Kind: Flatpak, ID: "org.mozilla.firefox", Name: "firefox", Source: "flatpak-info"}},
		{"flatpak from an escaped cgroup name", 2100, Sandbox{Kind: Flatpak, ID: "com.example.my-app", Name: "my-app", Source: "cgroup"}},
		{"malformed .flatpak-info falls back to the cgroup", 2150, Sandbox{Kind: Flatpak, ID: "org.gnome.Maps", Name: "Maps", Source: "cgroup"}},
		{"snap from its scope", 2200, Sandbox{Kind: Snap, ID: "firefox", App: "firefox", Name: "firefox", Source: "cgroup"}},
		{"snap app from an older scope name", 2250, Sandbox{Kind: Snap, ID: "lxd", App: "lxc", Name: "lxd.lxc", Source: "cgroup"}},
		{"snap from its executable", 2260, Sandbox{Kind: Snap, ID: "hello-world", Name: "hello-world", Source: "exe"}},
		{"appimage with $APPIMAGE", 2300, Sandbox{Kind: AppImage, ID: "/home/alice/Apps/Obsidian-1.4.16.AppImage", Name: "Obsidian-1.4.16", Source: "exe"}},
		{"child of an appimage running a system binary", 2400, Sandbox{}},
		{"extracted appimage under $APPDIR", 2450, Sandbox{Kind: AppImage, ID: "/opt/Tool.appimage", Name: "Tool", Source: "environ"}},
		{"appimage without environment", 2460, Sandbox{Kind: AppImage, Name: "kdenli", Source: "exe"}},
		{"plain process", 1300, Sandbox{}},
		{"gnome app scope is not a sandbox", 1200, Sandbox{}},
		{"kernel thread", 2, Sandbox{}},
		{"zombie", 3700, Sandbox{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := snapshot.Sandbox(tt.pid)
			if err != nil {
				t.Fatalf("Sandbox(%d): %v", tt.pid, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Sandbox(%d) (-want +got):\n%s", tt.pid, diff)
			}
		})
	}
	if _, err := snapshot.Sandbox(2999); !errors.Is(err, ErrGone) {
		t.Errorf("Sandbox(2999) error = %v, want ErrGone", err)
	}
}

func TestSandboxFromCgroup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Sandbox
		ok   bool
	}{
		{"/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.gnome.Calculator-4242.scope",
			Sandbox{Kind: Flatpak, ID: "org.gnome.Calculator", Name: "Calculator", Source: "cgroup"}, true},
		{"/system.slice/snap.lxd.daemon.service", Sandbox{Kind: Snap, ID: "lxd", App: "daemon", Name: "lxd.daemon", Source: "cgroup"}, true},
		{"/user.slice/snap.firefox_beta.firefox-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9.scope",
			Sandbox{Kind: Snap, ID: "firefox_beta", App: "firefox", Name: "firefox_beta.firefox", Source: "cgroup"}, true},
		{"/user.slice/snap.core.hook.configure-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9.scope",
			Sandbox{Kind: Snap, ID: "core", App: "hook.configure", Name: "core.hook.configure", Source: "cgroup"}, true},
		{"/app.slice/app-flatpak-org.mozilla.firefox-x.scope", Sandbox{}, false},
		{"/app.slice/app-flatpak-nodots-12.scope", Sandbox{}, false},
		{"/app.slice/app-flatpak--12.scope", Sandbox{}, false},
		{"/app.slice/app-flatpak-.scope", Sandbox{}, false},
		{"/system.slice/snap.Bad.app.service", Sandbox{}, false},
		{"/system.slice/snap.lxd.service", Sandbox{}, false},
		{"/system.slice/snapd.service", Sandbox{}, false},
		{"/", Sandbox{}, false},
	}
	for _, tt := range tests {
		got, ok := sandboxFromCgroup(tt.in)
		if ok != tt.ok {
			t.Errorf("sandboxFromCgroup(%q) ok = %v, want %v", tt.in, ok, tt.ok)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("sandboxFromCgroup(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestParseFlatpakInfo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"application", "[Application]\nname=org.gnome.Maps\n", "org.gnome.Maps", true},
		{"spaces and comments", "# made by flatpak\n[Application]\n name = org.gnome.Maps \n", "org.gnome.Maps", true},
		{"bare runtime", "[Runtime]\nname=org.freedesktop.Sdk\n", "org.freedesktop.Sdk", true},
		{"name outside [Application]", "[Instance]\nname=org.gnome.Maps\n", "", false},
		{"invalid application ID", "[Application]\nname=org.gnome.3Maps\n", "", false},
		{"invalid application does not fall back to the runtime", "[Application]\nname=x\n[Runtime]\nname=org.freedesktop.Sdk\n", "", false},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseFlatpakInfo([]byte(tt.in))
			if got != tt.want || ok != tt.ok {
				t.Errorf("parseFlatpakInfo(%q) = %q, %v, want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestCgroupsAndEnviron(t *testing.T) {
	t.Parallel()
	cg, err := snapshot.Cgroups(2200)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/user.slice/user-1000.slice/user@1000.service/app.slice/snap.firefox.firefox-2b8f4a3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c.scope"}, cg); diff != "" {
		t.Errorf("Cgroups(2200) (-want +got):\n%s", diff)
	}
	env, err := snapshot.Environ(2300)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := Getenv(env, "APPDIR"); !ok || v != "/tmp/.mount_ObsidiAbC123" {
		t.Errorf("Getenv(Environ(2300), APPDIR) = %q, %v", v, ok)
	}
	if _, ok := Getenv(env, "APP"); ok {
		t.Errorf("Getenv(Environ(2300), APP) found a prefix match")
	}
}
