// Package testbus runs, for tests, a private system-like D-Bus daemon with
// the project's bus policy, a real polkitd on it with test rules, test
// users, and test clients running as those users.
//
// Everything it starts or installs is stopped or removed by t.Cleanup.
// It needs root and the dbus-daemon, polkitd, useradd and setpriv
// programs; without them tests skip, or fail under AEGIS_TEST_STRICT=1.
package testbus

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aegisfw/aegis/internal/testenv"
	"github.com/godbus/dbus/v5"
)

// Well-known locations of polkit on Debian.
const (
	// PolkitDaemon is the polkitd binary; it runs without systemd.
	PolkitDaemon = "/usr/lib/polkit-1/polkitd"
	// PolkitBusPolicy lets polkitd own its name and everyone call it.
	PolkitBusPolicy = "/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf"
	// polkitActionsDir and polkitRulesDir are compiled into polkitd; it
	// has no per-instance override, so test files go there.
	polkitActionsDir = "/usr/share/polkit-1/actions"
	polkitRulesDir   = "/etc/polkit-1/rules.d"
	// polkitLock serializes tests (across test binaries) that install
	// files into polkit's system directories.
	polkitLock = "/run/aegis-testbus-polkit.lock"
)

// ChildEnv names the environment variable that tells a re-executed test
// binary which child role to play (see Bus.StartChild).
const ChildEnv = "AEGIS_TESTBUS_CHILD"

// startTimeout bounds the wait for a daemon to become ready.
const startTimeout = 20 * time.Second

// busConfig is a system-type bus with the system bus's default-deny
// policy; @DIR@ is replaced by the bus's directory.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=@DIR@/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>@DIR@/system.d</includedir>
</busconfig>
`

// Options say what a Bus starts.
type Options struct {
	// PolicyFiles are bus policy files (system.d/*.conf) the bus includes.
	PolicyFiles []string
	// Polkit starts polkitd on the bus (PolkitBusPolicy is included).
	Polkit bool
	// PolkitActions are .policy files installed for polkitd.
	PolkitActions []string
	// PolkitRules is the text of a .rules file installed for polkitd.
	PolkitRules string
}

// Bus is a running private system-like bus.
type Bus struct {
	// Addr is the bus address, as DBUS_SYSTEM_BUS_ADDRESS takes it.
	Addr string
	dir  string
}

// Start starts a bus (and polkitd if asked) for t. It skips t when it
// cannot run here.
func Start(t testing.TB, opts Options) *Bus {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "dbus-daemon", "setpriv", "useradd")
	policies := opts.PolicyFiles
	if opts.Polkit {
		if _, err := os.Stat(PolkitDaemon); err != nil {
			testenv.Skip(t, "needs polkitd: "+err.Error())
		}
		if _, err := user.Lookup("polkitd"); err != nil {
			testenv.Skip(t, "needs the polkitd user: "+err.Error())
		}
		policies = append(policies[:len(policies):len(policies)], PolkitBusPolicy)
	}
	dir, err := os.MkdirTemp("", "aegis-testbus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Test users must reach the socket.
	mustDo(t, os.Chmod(dir, 0o755))
	mustDo(t, os.Mkdir(filepath.Join(dir, "system.d"), 0o755))
	for _, p := range policies {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("bus policy: %v", err)
		}
		mustDo(t, os.WriteFile(filepath.Join(dir, "system.d", filepath.Base(p)), b, 0o644))
	}
	conf := filepath.Join(dir, "bus.conf")
	mustDo(t, os.WriteFile(conf, []byte(strings.ReplaceAll(busConfig, "@DIR@", dir)), 0o644))

	addrR, addrW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog", "--print-address=3")
	cmd.ExtraFiles = []*os.File{addrW}
	startLogged(t, cmd, "dbus-daemon")
	addrW.Close()
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(addrR).ReadString('\n')
		addrR.Close()
		addr <- strings.TrimSpace(line)
	}()
	b := &Bus{dir: dir}
	select {
	case b.Addr = <-addr:
	case <-time.After(startTimeout):
		t.Fatal("dbus-daemon did not print its address")
	}
	if b.Addr == "" {
		t.Fatal("dbus-daemon exited without an address")
	}
	if opts.Polkit {
		b.startPolkit(t, opts)
	}
	return b
}

func mustDo(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startLogged starts cmd, keeps its output for the test log on failure,
// and stops it (by its own pid: SIGTERM, then SIGKILL) at cleanup.
func startLogged(t testing.TB, cmd *exec.Cmd, name string) {
	t.Helper()
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startPolkit installs the actions and rules, starts polkitd on the bus
// and waits until it owns its name.
func (b *Bus) startPolkit(t testing.TB, opts Options) {
	t.Helper()
	lockPolkit(t)
	tag := strconv.Itoa(os.Getpid())
	for _, p := range opts.PolkitActions {
		name := strings.TrimSuffix(filepath.Base(p), ".policy") + ".testbus-" + tag + ".policy"
		installFile(t, p, filepath.Join(polkitActionsDir, name))
	}
	if opts.PolkitRules != "" {
		src := filepath.Join(b.dir, "rules")
		mustDo(t, os.WriteFile(src, []byte(opts.PolkitRules), 0o644))
		installFile(t, src, filepath.Join(polkitRulesDir, "10-aegis-testbus-"+tag+".rules"))
	}
	cmd := exec.Command(PolkitDaemon, "--no-debug")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr)
	startLogged(t, cmd, "polkitd")
	conn := b.Conn(t)
	WaitFor(t, startTimeout, "polkitd to own org.freedesktop.PolicyKit1", func() bool {
		var has bool
		err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.freedesktop.PolicyKit1").Store(&has)
		return err == nil && has
	})
}

// lockPolkit takes an exclusive lock, held until cleanup, so that test
// binaries running in parallel do not install or remove each other's
// polkit files while their polkitd reads them.
func lockPolkit(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(polkitLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("polkit lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("polkit lock: %v", err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// installFile copies src to dst (mode 0644) and removes it at cleanup.
func installFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatalf("install: %v", err)
	}
	t.Cleanup(func() { os.Remove(dst) })
}

// Conn returns a new connection to the bus as the test's own user,
// closed at cleanup.
func (b *Bus) Conn(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Addr)
	if err != nil {
		t.Fatalf("connect to test bus: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// WaitFor polls cond until it holds, failing t after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// User is a test user.
type User struct {
	Name     string
	UID, GID uint32
}

// EnsureUser returns the system user name, creating it with
// useradd --system if it does not exist. Test users are kept for later
// runs: creating them is idempotent and they own no files.
func EnsureUser(t testing.TB, name string) User {
	t.Helper()
	testenv.RequireRoot(t)
	u, err := user.Lookup(name)
	if err != nil {
		out, aerr := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		// A parallel test binary may have created it in the meantime.
		if u, err = user.Lookup(name); err != nil {
			t.Fatalf("useradd %s: %v: %s", name, aerr, out)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("user %s: %v", name, err)
	}
	return User{Name: name, UID: uint32(uid), GID: uint32(gid)}
}

// SharedExecutable copies the running test binary into a new directory
// every user can read, so it can be re-executed as a test user, and
// returns its path. extra bytes are appended to the copy, which changes
// its SHA-256 but not how it runs.
func SharedExecutable(t testing.TB, extra string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "aegis-testbin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mustDo(t, os.Chmod(dir, 0o755))
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := filepath.Join(dir, filepath.Base(self))
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(f, src)
	if err == nil {
		_, err = f.WriteString(extra)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	mustDo(t, err)
	return dst
}

// Command returns a command that runs name as user u (with setpriv, no
// supplementary groups) on the bus.
func (b *Bus) Command(u User, name string, args ...string) *exec.Cmd {
	a := append([]string{"--reuid=" + strconv.FormatUint(uint64(u.UID), 10),
		"--regid=" + strconv.FormatUint(uint64(u.GID), 10), "--clear-groups", "--", name}, args...)
	cmd := exec.Command("setpriv", a...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+b.Addr)
	return cmd
}

// Child is a test binary re-executed as another user, speaking a line
// protocol: the test writes command lines to its stdin and reads its
// stdout lines.
type Child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	done  chan struct{}
}

// StartChild runs exe (see SharedExecutable) as u with ChildEnv=role and
// args; the binary's TestMain must dispatch on ChildEnv. The child is
// killed at cleanup.
func (b *Bus) StartChild(t testing.TB, u User, exe, role string, args ...string) *Child {
	t.Helper()
	cmd := b.Command(u, exe, args...)
	cmd.Env = append(cmd.Env, ChildEnv+"="+role)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s as %s: %v", role, u.Name, err)
	}
	c := &Child{cmd: cmd, in: in, lines: make(chan string, 256), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(outR)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	go func() { cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("child %s (%s) stderr:\n%s", role, u.Name, stderr.String())
		}
	})
	return c
}

// PID returns the child's pid (that of setpriv, which execs the binary).
func (c *Child) PID() int { return c.cmd.Process.Pid }

// Send writes one command line to the child.
func (c *Child) Send(t testing.TB, line string) {
	t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		t.Fatalf("write to child: %v", err)
	}
}

// Next returns the child's next output line, failing t after timeout.
func (c *Child) Next(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatal("child exited")
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no output from child within %v", timeout)
	}
	return ""
}

// Lines returns the channel of the child's output lines.
func (c *Child) Lines() <-chan string { return c.lines }

// Kill kills the child and waits for it.
func (c *Child) Kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// Wait waits for the child to exit by itself, up to ctx.
func (c *Child) Wait(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for child: %w", ctx.Err())
	}
}

// ModuleFile returns the path of a file given relative to the module
// root (the directory holding go.mod), found from the working directory.
func ModuleFile(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}
