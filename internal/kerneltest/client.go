//go:build linux

package kerneltest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

func errName(err error) string {
	if err == nil {
		return ""
	}
	var en unix.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return err.Error()
}

func sockaddr(ap netip.AddrPort, family int) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// dial opens a socket of sotype for ap and connects it. On failure it
// reports the error as op's result and returns false.
func dial(op, dst string, ap netip.AddrPort, family, sotype int) (int, bool) {
	fd, err := unix.Socket(family, sotype|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		emit(Result{Op: op, Dst: dst, Err: errName(err)})
		return -1, false
	}
	if err := unix.Connect(fd, sockaddr(ap, family)); err != nil {
		unix.Close(fd)
		emit(Result{Op: op, Dst: dst, Err: errName(err)})
		return -1, false
	}
	return fd, true
}

func emit(r Result) {
	r.PID = os.Getpid()
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

// runClient performs one client operation and returns the exit code.
func runClient(args []string) int {
	if len(args) == 1 && args[0] == "wait" {
		emit(Result{Op: "wait"})
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "kerneltest client: want OP DST [ARGS]")
		return 2
	}
	op, dst := args[0], args[1]
	ap, err := netip.ParseAddrPort(dst)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kerneltest client:", err)
		return 2
	}
	// A bracketed IPv6 address (also v4-mapped) uses an AF_INET6 socket.
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	num := func(i int) int {
		if len(args) <= i {
			return 0
		}
		n, _ := strconv.Atoi(args[i])
		return n
	}
	switch op {
	case "connect":
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			emit(Result{Op: op, Dst: dst, Err: errName(err)})
			return 0
		}
		tv := unix.NsecToTimeval(int64(time.Duration(num(2)) * time.Millisecond))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		t0 := Monotonic()
		err = unix.Connect(fd, sockaddr(ap, family))
		emit(Result{Op: op, Dst: dst, Err: errName(err), T0: t0, T1: Monotonic()})
		unix.Close(fd)
	case "tfo":
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			emit(Result{Op: op, Dst: dst, Err: errName(err)})
			return 0
		}
		t0 := Monotonic()
		err = unix.Sendto(fd, []byte("hello"), unix.MSG_FASTOPEN, sockaddr(ap, family))
		emit(Result{Op: op, Dst: dst, Err: errName(err), T0: t0, T1: Monotonic()})
		unix.Close(fd)
	case "udp", "udpconn":
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			emit(Result{Op: op, Dst: dst, Err: errName(err)})
			return 0
		}
		sa := sockaddr(ap, family)
		if op == "udpconn" {
			if err := unix.Connect(fd, sa); err != nil {
				emit(Result{Op: op, Dst: dst, Err: errName(err)})
				return 0
			}
		}
		for i := 0; i < num(2); i++ {
			t0 := Monotonic()
			msg := []byte(fmt.Sprintf("%d %d", i, t0))
			if op == "udpconn" {
				_, err = unix.Write(fd, msg)
			} else {
				err = unix.Sendto(fd, msg, 0, sa)
			}
			emit(Result{Op: op, Dst: dst, Err: errName(err), T0: t0, T1: Monotonic(), N: i})
			time.Sleep(time.Duration(num(3)) * time.Millisecond)
		}
		unix.Close(fd)
	case "established":
		// established DST: connect, report, then block reading until the
		// connection ends and report how it ended.
		t0 := Monotonic()
		fd, ok := dial(op, dst, ap, family, unix.SOCK_STREAM)
		if !ok {
			return 0
		}
		emit(Result{Op: op, Dst: dst, T0: t0, T1: Monotonic()})
		buf := make([]byte, 512)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil || n == 0 {
				if err == nil {
					err = io.EOF
				}
				emit(Result{Op: op, Dst: dst, Err: errName(err), T1: Monotonic()})
				return 0
			}
		}
	case "raw":
		// raw DST: open a raw ICMP socket of DST's family and close it.
		proto := unix.IPPROTO_ICMP
		if family == unix.AF_INET6 {
			proto = unix.IPPROTO_ICMPV6
		}
		t0 := Monotonic()
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		emit(Result{Op: op, Dst: dst, Err: errName(err), T0: t0, T1: Monotonic()})
		if err == nil {
			unix.Close(fd)
		}
	case "connectmany":
		// connectmany DST N: N non-blocking connects, then wait for stdin
		// to close so the sockets stay open.
		for i := 0; i < num(2); i++ {
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
			if err != nil {
				emit(Result{Op: op, Dst: dst, Err: errName(err)})
				return 0
			}
			if err := unix.Connect(fd, sockaddr(ap, family)); err != nil && err != unix.EINPROGRESS {
				emit(Result{Op: op, Dst: dst, Err: errName(err)})
				return 0
			}
		}
		emit(Result{Op: op, Dst: dst, N: num(2)})
		_, _ = io.Copy(io.Discard, os.Stdin)
	case "dns":
		// dns DST NAME: a connected UDP query for NAME's A record; the
		// result's N is the answer's length.
		fd, ok := dial(op, dst, ap, family, unix.SOCK_DGRAM)
		if !ok {
			return 0
		}
		q, err := dnsQuery(args[2])
		if err != nil {
			emit(Result{Op: op, Dst: dst, Err: err.Error()})
			return 0
		}
		tv := unix.NsecToTimeval(int64(5 * time.Second))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		t0 := Monotonic()
		if _, err := unix.Write(fd, q); err != nil {
			emit(Result{Op: op, Dst: dst, Err: errName(err)})
			return 0
		}
		buf := make([]byte, 1500)
		n, err := unix.Read(fd, buf)
		emit(Result{Op: op, Dst: dst, Err: errName(err), T0: t0, T1: Monotonic(), N: n})
		unix.Close(fd)
	case "bench":
		n := num(2)
		lg := unix.Linger{Onoff: 1, Linger: 0}
		sa := sockaddr(ap, family)
		var first error
		t0 := Monotonic()
		for i := 0; i < n; i++ {
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				first = err
				break
			}
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &lg)
			if err := unix.Connect(fd, sa); err != nil && first == nil {
				first = err
			}
			unix.Close(fd)
		}
		emit(Result{Op: op, Dst: dst, Err: errName(first), T0: t0, T1: Monotonic(), N: n})
	case "bulk":
		// bulk DST MiB: connect and write MiB mebibytes.
		fd, ok := dial(op, dst, ap, family, unix.SOCK_STREAM)
		if !ok {
			return 0
		}
		buf := make([]byte, 256<<10)
		t0 := Monotonic()
		total := num(2) << 20
		for sent := 0; sent < total; {
			n, err := unix.Write(fd, buf[:min(len(buf), total-sent)])
			if err != nil {
				emit(Result{Op: op, Dst: dst, Err: errName(err)})
				return 0
			}
			sent += n
		}
		unix.Close(fd)
		emit(Result{Op: op, Dst: dst, T0: t0, T1: Monotonic(), N: total})
	default:
		fmt.Fprintln(os.Stderr, "kerneltest client: unknown op", op)
		return 2
	}
	return 0
}

func dnsQuery(name string) ([]byte, error) {
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, err
	}
	m := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 0x4242, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	return m.Pack()
}
