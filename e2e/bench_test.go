package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/kerneltest"
	"github.com/aegisfw/aegis/internal/testbus"
)

// Goals the benchmarks report against.
const (
	goalPromptP99 = 20 * time.Millisecond
	goalAnswerP99 = 600 * time.Millisecond
	goalRSS       = 30 << 20
)

// percentile returns the p-th percentile (0-100) of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(float64(len(ds)-1)*p/100 + 0.5)
	return ds[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkPromptLatency measures, for an unknown app, the time from its
// connect() to the prompt reaching the agent over D-Bus, and from the
// agent's answer to the connection being established. Baselines from the
// same run: a GetStatus round trip over the same bus, and a connect of
// an allowed app (decided in the kernel). At least 60 samples: half
// answered at once, half after a think time (see the loop).
func BenchmarkPromptLatency(b *testing.B) {
	e := newEnv(b)
	e.startSubprocess(b, "")
	a := e.startAgent(b)
	client := e.client(b)
	ctx := context.Background()

	n := max(b.N, 60)
	var toPrompt, toConn, toConnLate, rtt []time.Duration
	for i := range n {
		t0 := time.Now()
		if _, err := client.Status(ctx); err != nil {
			b.Fatal(err)
		}
		rtt = append(rtt, time.Since(t0))

		c := e.connect(b, false, 30*time.Second)
		p := a.prompt(b, c.PID)
		// Every other answer comes after a think time spread over one
		// SYN retransmission interval, as a person's click would; the
		// others come at once, the worst case for the wait on the next SYN.
		late := i%2 == 1
		if late {
			time.Sleep(time.Duration(i*37%100) * 10 * time.Millisecond)
		}
		tAnswer := a.answer(b, p.Prompt.ID, dbusapi.Allow, dbusapi.Once)
		r := c.Next(b)
		if r.Err != "" {
			b.Fatalf("connect after allow: %s", r.Err)
		}
		c.Wait(b)
		toPrompt = append(toPrompt, time.Duration(p.T-r.T0))
		if late {
			toConnLate = append(toConnLate, time.Duration(r.T1-tAnswer))
		} else {
			toConn = append(toConn, time.Duration(r.T1-tAnswer))
		}
	}
	// Baseline: the same client, allowed, decided in the kernel.
	if out, code := e.ctl(b, "allow", e.clientExe, "--user", "any"); code != 0 {
		b.Fatalf("allow: %s", out)
	}
	var known []time.Duration
	for range 20 {
		c := e.connect(b, false, 5*time.Second)
		r := c.Next(b)
		if r.Err != "" {
			b.Fatalf("allowed connect: %s", r.Err)
		}
		c.Wait(b)
		known = append(known, time.Duration(r.T1-r.T0))
	}
	for _, s := range [][]time.Duration{toPrompt, toConn, toConnLate, rtt, known} {
		slices.Sort(s)
	}
	b.ReportMetric(ms(percentile(toPrompt, 50)), "prompt-p50-ms")
	b.ReportMetric(ms(percentile(toPrompt, 99)), "prompt-p99-ms")
	b.ReportMetric(ms(percentile(toConn, 50)), "answer-p50-ms")
	b.ReportMetric(ms(percentile(toConn, 99)), "answer-p99-ms")
	b.ReportMetric(ms(percentile(toConnLate, 50)), "answer-after-think-p50-ms")
	b.ReportMetric(ms(percentile(toConnLate, 99)), "answer-after-think-p99-ms")
	b.ReportMetric(ms(percentile(rtt, 50)), "dbus-rtt-p50-ms")
	b.ReportMetric(ms(percentile(known, 50)), "known-connect-p50-ms")
	b.ReportMetric(float64(percentile(toPrompt, 99))/float64(goalPromptP99), "prompt-p99/goal")
	b.ReportMetric(float64(percentile(toConn, 99))/float64(goalAnswerP99), "answer-p99/goal")
	b.ReportMetric(float64(percentile(toPrompt, 50))/float64(percentile(rtt, 50)), "prompt-p50/dbus-rtt")
	b.ReportMetric(float64(percentile(toConn, 50))/float64(percentile(known, 50)), "answer-p50/known-connect")
}

// vmRSS returns a process's resident set size in bytes.
func vmRSS(tb testing.TB, pid int) int64 {
	tb.Helper()
	v := statusField(tb, fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	return v << 10 // kB
}

// statusField reads a numeric field of a /proc status file.
func statusField(tb testing.TB, path, field string) int64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			v, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			if err != nil {
				tb.Fatalf("%s %s: %v", path, field, err)
			}
			return v
		}
	}
	tb.Fatalf("%s has no %s", path, field)
	return 0
}

// BenchmarkRSS measures the helper's resident memory at rest and after
// 100,000 flows: connections from an unknown app in learning mode, each
// to another loopback address so that the kernel reports every one.
// Baseline: an idle Go process from the same binary.
func BenchmarkRSS(b *testing.B) {
	e := newEnv(b)
	h := e.startSubprocess(b, "")
	idle := startIdle(b)
	ctx := context.Background()
	client := e.client(b)
	settle(b)
	rest := vmRSS(b, h.pid())
	idleRSS := vmRSS(b, idle)

	if out, code := e.ctl(b, "mode", "learning"); code != 0 {
		b.Fatalf("mode learning: %s", out)
	}
	const flows = 100_000
	before, err := client.Counters(ctx)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	runFloodIn(b, e.cg, flows)
	floodTime := time.Since(t0)
	// Wait until the helper has taken in what the kernel reported.
	var after dbusapi.Counters
	last, stable := uint64(0), 0
	testbus.WaitFor(b, 2*time.Minute, "the helper to take in the flows", func() bool {
		after, err = client.Counters(ctx)
		if err != nil {
			b.Fatal(err)
		}
		seen := after.Allowed + after.RingDrops
		if seen == last {
			stable++
		} else {
			last, stable = seen, 0
		}
		return seen-before.Allowed-before.RingDrops >= flows || stable >= 25
	})
	fl, err := client.Flows(ctx)
	if err != nil {
		b.Fatal(err)
	}
	full := vmRSS(b, h.pid())
	b.ReportMetric(float64(rest)/(1<<20), "rest-MiB")
	b.ReportMetric(float64(full)/(1<<20), "100k-flows-MiB")
	b.ReportMetric(float64(idleRSS)/(1<<20), "idle-go-MiB")
	b.ReportMetric(float64(full)/float64(goalRSS), "100k-flows/goal")
	b.ReportMetric(float64(rest)/float64(idleRSS), "rest/idle-go")
	b.ReportMetric(float64(after.Allowed-before.Allowed), "flows-seen")
	b.ReportMetric(float64(after.RingDrops-before.RingDrops), "ring-drops")
	b.ReportMetric(float64(len(fl)), "flow-table-len")
	b.ReportMetric(floodTime.Seconds(), "flood-s")
}

// settle lets a freshly started process finish its start-up work.
func settle(tb testing.TB) {
	tb.Helper()
	time.Sleep(2 * time.Second) // a measurement window, not a wait for a condition
}

// startIdle starts the idle baseline process and returns its pid.
func startIdle(tb testing.TB) int {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), idleEnv+"=1")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// runIdle is the baseline: a Go process that wakes once a second.
func runIdle() {
	t := time.NewTicker(time.Second)
	for range t.C {
	}
}

// runFloodIn runs the flood client in cg and waits for it.
func runFloodIn(tb testing.TB, cg *kerneltest.Cgroup, n int) {
	tb.Helper()
	fd, err := unix.Open(cg.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(fd)
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), floodEnv+"="+strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("flood: %v: %s", err, out)
	}
}

// runFlood makes n TCP connects, each to its own address in 127.16.0.0/12
// on a port nothing listens on: refused at once, reported by the kernel
// in learning mode once per destination. It paces itself so that the
// ring buffer is not the bottleneck being measured.
func runFlood(arg string) int {
	n, err := strconv.Atoi(arg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	for i := range n {
		a := 0x7f100000 + i + 1
		sa := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "flood: socket:", err)
			return 1
		}
		_ = unix.Connect(fd, sa) // ECONNREFUSED
		unix.Close(fd)
		if i%1000 == 999 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return 0
}

// wakeups sums the context switches of every thread of pid.
func wakeups(tb testing.TB, pid int) int64 {
	tb.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		tb.Fatalf("threads of %d: %v", pid, err)
	}
	var sum int64
	for _, s := range tasks {
		sum += statusField(tb, s, "voluntary_ctxt_switches:")
		sum += statusField(tb, s, "nonvoluntary_ctxt_switches:")
	}
	return sum
}

// BenchmarkWakeups counts the helper's context switches (all threads)
// over 10 s at rest, with an agent registered, against an idle Go
// process that wakes once a second (the heartbeat's rate).
func BenchmarkWakeups(b *testing.B) {
	e := newEnv(b)
	h := e.startSubprocess(b, "")
	e.startAgent(b)
	idle := startIdle(b)
	settle(b)
	const window = 10 * time.Second
	h0, i0 := wakeups(b, h.pid()), wakeups(b, idle)
	time.Sleep(window) // the measurement window
	h1, i1 := wakeups(b, h.pid()), wakeups(b, idle)
	hps := float64(h1-h0) / window.Seconds()
	ips := float64(i1-i0) / window.Seconds()
	b.ReportMetric(hps, "helper-wakeups/s")
	b.ReportMetric(ips, "idle-1Hz-wakeups/s")
	b.ReportMetric(hps/max(ips, 0.1), "helper/idle-1Hz")
}
