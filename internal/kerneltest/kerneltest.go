//go:build linux

// Package kerneltest runs test clients inside a child cgroup of the real
// kernel: it creates and removes the cgroup, mounts a private bpffs, and
// re-executes the test binary as a network client whose results come
// back as JSON.
package kerneltest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/internal/testenv"
)

// clientEnv selects client mode when the test binary is re-executed.
const clientEnv = "AEGIS_KERNELTEST_CLIENT"

// Main runs the client when the binary was started as one, and the tests
// otherwise. Call it from TestMain.
func Main(m *testing.M) {
	if args := os.Getenv(clientEnv); args != "" {
		var argv []string
		if err := json.Unmarshal([]byte(args), &argv); err != nil {
			fmt.Fprintln(os.Stderr, "kerneltest client:", err)
			os.Exit(2)
		}
		os.Exit(runClient(argv))
	}
	os.Exit(m.Run())
}

// Require skips t unless it runs as root on a kernel with cgroup v2 and
// the cgroup socket program types.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := cgroup2Root(); err != nil {
		testenv.Skip(t, err.Error())
	}
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.CGroupSKB, ebpf.CGroupSock} {
		if err := features.HaveProgramType(pt); err != nil {
			testenv.Skip(t, fmt.Sprintf("kernel lacks %v programs: %v", pt, err))
		}
	}
}

func cgroup2Root() (string, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup2 mount")
}

// Cgroup is a child cgroup that lives for one test.
type Cgroup struct {
	Path string
	fd   int
}

// NewCgroup creates a child cgroup of the cgroup2 root for t and removes
// it, killing whatever still runs in it, when t ends.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	return NewCgroupNamed(t, "")
}

// NewCgroupNamed is NewCgroup for tests that need several cgroups: suffix
// tells them apart.
func NewCgroupNamed(t testing.TB, suffix string) *Cgroup {
	t.Helper()
	root, err := cgroup2Root()
	if err != nil {
		testenv.Skip(t, err.Error())
	}
	name := fmt.Sprintf("aegis-test-%d-%s", os.Getpid(), sanitize(t.Name()))
	if suffix != "" {
		name += "-" + sanitize(suffix)
	}
	p := filepath.Join(root, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(p)
		t.Fatalf("open cgroup: %v", err)
	}
	cg := &Cgroup{Path: p, fd: fd}
	t.Cleanup(func() {
		unix.Close(fd)
		_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(p)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", p, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return cg
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, s)
}

// MountBPFFS mounts a private bpffs for t and unmounts it when t ends.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		testenv.Skip(t, fmt.Sprintf("mount bpffs: %v", err))
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

// Result is what a client operation reports.
type Result struct {
	Op  string `json:"op"`
	Dst string `json:"dst"`
	// Err is the errno name (ECONNABORTED, EPERM, ...) or "".
	Err string `json:"err"`
	// T0 and T1 are CLOCK_MONOTONIC ns around the operation.
	T0  int64 `json:"t0"`
	T1  int64 `json:"t1"`
	N   int   `json:"n,omitempty"`
	PID int   `json:"pid"`
}

// Client is a running client process.
type Client struct {
	cmd    *exec.Cmd
	out    *bufio.Scanner
	stdin  io.WriteCloser
	stderr bytes.Buffer
	PID    int
}

// Options for starting a client.
type Options struct {
	// Exe runs this executable (a copy of the test binary) instead of the
	// test binary itself.
	Exe string
	// Credential runs the client as another user.
	Credential *syscall.Credential
}

// Start runs a client operation inside cg. Operations:
//
//	connect DST TIMEOUT_MS      blocking TCP connect
//	tfo DST                     TCP Fast Open sendto without connect
//	udp DST COUNT INTERVAL_MS   unconnected sendto, one result each
//	udpconn DST COUNT INTERVAL_MS  connected UDP send
//	bench DST N                 N x (socket, connect, RST close)
//	bulk DST MIB                connect and write MIB mebibytes
//	connectmany DST N           N non-blocking connects, kept open until Wait
//	dns DST NAME                connected UDP DNS query for NAME
//	raw DST                     open a raw ICMP socket of DST's family
//	established DST             connect, then read until the connection ends
//	wait                        print a line and wait for stdin to close
func (cg *Cgroup) Start(t testing.TB, opts Options, op ...string) *Client {
	t.Helper()
	exe := opts.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			t.Fatal(err)
		}
	}
	argv, _ := json.Marshal(op)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), clientEnv+"="+string(argv))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd, Credential: opts.Credential}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{cmd: cmd, out: bufio.NewScanner(stdout)}
	cmd.Stderr = &c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client: %v", err)
	}
	c.PID = cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// Next returns the client's next result.
func (c *Client) Next(t testing.TB) Result {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("client %d ended without a result: %v; stderr: %s", c.PID, c.out.Err(), c.stderr.String())
	}
	var r Result
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		t.Fatalf("client output %q: %v", c.out.Text(), err)
	}
	return r
}

// Running reports whether the client process has not exited.
func (c *Client) Running(t testing.TB) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.PID))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// Wait closes the client's stdin and waits for it to exit.
func (c *Client) Wait(t testing.TB) {
	t.Helper()
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("client %d: %v; stderr: %s", c.PID, err, c.stderr.String())
	}
}

// Run starts a client operation and returns its first result.
func (cg *Cgroup) Run(t testing.TB, opts Options, op ...string) Result {
	t.Helper()
	c := cg.Start(t, opts, op...)
	r := c.Next(t)
	c.Wait(t)
	return r
}

// Monotonic returns CLOCK_MONOTONIC in ns, the clock of client results
// and of datapath events.
func Monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// CopyExecutable copies the test binary to dir and returns the copy's
// path: a different file with the same content.
func CopyExecutable(t testing.TB, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, filepath.Base(self)+".copy")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// ExeStat returns the stat of an executable, for computing its key.
func ExeStat(t testing.TB, path string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// SharedCopy copies the test binary into a fresh directory that every
// user may enter, so clients can run it under another uid.
func SharedCopy(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "aegis-kerneltest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return CopyExecutable(t, dir)
}

// ListenTCP opens a TCP listener on addr in this network namespace; see
// Serve.
func ListenTCP(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, l)
}

// Serve accepts connections on l and reads them to the end until t ends,
// and returns l's address.
func Serve(t testing.TB, l net.Listener) netip.AddrPort {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10) // large reads keep bulk senders the bottleneck
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}
