//go:build linux

package kerneltest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/internal/testenv"
)

// NetNS is a network namespace joined to this one by a veth pair: a test
// host with its own address, so traffic leaves loopback without leaving
// the machine.
type NetNS struct {
	Name string
	// Addr is the namespace's address; HostAddr is this side's.
	Addr, HostAddr netip.Addr
}

var netnsSeq atomic.Uint32

// NewNetNS creates a network namespace with a veth link to this one,
// removed when t ends. Addresses are from 10.199.0.0/16 and live only on
// the pair.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	testenv.RequireTool(t, "ip")
	seq := netnsSeq.Add(1)
	id := (os.Getpid()%200)*64 + int(seq%64)
	n := &NetNS{
		Name:     fmt.Sprintf("aegis-test-%d-%d", os.Getpid(), seq),
		HostAddr: netip.AddrFrom4([4]byte{10, 199, byte(id >> 6), byte(id&63)*4 + 1}),
		Addr:     netip.AddrFrom4([4]byte{10, 199, byte(id >> 6), byte(id&63)*4 + 2}),
	}
	host, peer := fmt.Sprintf("aeg%dh", id), fmt.Sprintf("aeg%dp", id)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", n.Name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", host).Run()
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("remove netns %s: %v: %s", n.Name, err, out)
		}
	})
	run("link", "add", host, "type", "veth", "peer", "name", peer)
	run("link", "set", peer, "netns", n.Name)
	run("addr", "add", n.HostAddr.String()+"/30", "dev", host)
	run("link", "set", host, "up")
	run("-n", n.Name, "addr", "add", n.Addr.String()+"/30", "dev", peer)
	run("-n", n.Name, "link", "set", peer, "up")
	run("-n", n.Name, "link", "set", "lo", "up")
	return n
}

// ListenTCP opens a TCP listener inside the namespace that accepts and
// drains connections until t ends.
func (n *NetNS) ListenTCP(t testing.TB) netip.AddrPort {
	t.Helper()
	var l net.Listener
	n.do(t, func() (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(n.Addr, 0).String())
		return err
	})
	return Serve(t, l)
}

// do runs fn on a thread that has entered the namespace, then returns the
// thread to this namespace.
func (n *NetNS) do(t testing.TB, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// The thread is unusable; keep it locked so it dies with the goroutine.
		runtime.LockOSThread()
		t.Fatalf("leave netns: %v", err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
}
