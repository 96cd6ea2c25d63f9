package firewall

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/kerneltest"
)

// percentile returns the p-th percentile of ds in milliseconds.
func percentile(ds []time.Duration, p float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return float64(s[i]) / float64(time.Millisecond)
}

// BenchmarkPromptLatency measures connect() of an unknown app to the
// prompt reaching the Prompter, against the baseline of a connect() the
// kernel allows by rule in the same run.
func BenchmarkPromptLatency(b *testing.B) {
	f := newFixture(b, options{})
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		n := f.pr.count()
		c := f.cg.Start(b, noOpts, "connect", f.tcp.String(), "10000")
		p := f.pr.wait(b, "held connect", byPID(c.PID))
		f.pr.mu.Lock()
		at := f.pr.at[n]
		f.pr.mu.Unlock()
		f.answer(b, p.ID, dbusapi.Deny, dbusapi.Once)
		r := c.Next(b)
		c.Wait(b)
		lat = append(lat, time.Duration(at-r.T0))
	}
	base := allowedConnect(b, f, len(lat))
	b.ReportMetric(percentile(lat, 0.5), "p50-ms")
	b.ReportMetric(percentile(lat, 0.99), "p99-ms")
	b.ReportMetric(percentile(base, 0.99), "allowed-connect-p99-ms")
	b.ReportMetric(percentile(lat, 0.99)/percentile(base, 0.99), "p99/allowed-p99")
}

// BenchmarkAnswerToConnect measures an answer (allow once, given as soon
// as the prompt arrives) to the held connect() returning, against the
// baseline of a connect() the kernel allows by rule in the same run.
func BenchmarkAnswerToConnect(b *testing.B) {
	f := newFixture(b, options{})
	var (
		mu       sync.Mutex
		answered = map[uint32]int64{}
	)
	f.pr.mu.Lock()
	f.pr.answer = func(p dbusapi.Prompt) {
		mu.Lock()
		answered[p.PID] = kerneltest.Monotonic()
		mu.Unlock()
		if err := f.e.Answer(context.Background(), dbusapi.Answer{ID: p.ID, Verdict: dbusapi.Allow, Scope: dbusapi.Once}); err != nil {
			b.Error(err)
		}
	}
	f.pr.mu.Unlock()
	var lat []time.Duration
	for b.Loop() {
		r := f.cg.Run(b, noOpts, "connect", f.tcp.String(), "10000")
		if r.Err != "" {
			b.Fatalf("connect: %s", r.Err)
		}
		mu.Lock()
		at := answered[uint32(r.PID)]
		mu.Unlock()
		lat = append(lat, time.Duration(r.T1-at))
	}
	base := allowedConnect(b, f, len(lat))
	b.ReportMetric(percentile(lat, 0.5), "p50-ms")
	b.ReportMetric(percentile(lat, 0.99), "p99-ms")
	b.ReportMetric(percentile(base, 0.99), "allowed-connect-p99-ms")
	b.ReportMetric(percentile(lat, 0.99)/percentile(base, 0.99), "p99/allowed-p99")
}

// allowedConnect times n connects of the test binary with the app
// allowed in the kernel, then withdraws the rule.
func allowedConnect(b *testing.B, f *fixture, n int) []time.Duration {
	b.Helper()
	b.StopTimer()
	key := bpf.ExeKeyOf(kerneltest.ExeStat(b, f.self))
	if err := f.dp.SetApp(key, bpf.AnyUID, bpf.App{ID: 1 << 30, Verdict: bpf.VerdictAllow}); err != nil {
		b.Fatal(err)
	}
	defer f.dp.DeleteApp(key, bpf.AnyUID)
	var out []time.Duration
	for range max(n, 10) {
		r := f.cg.Run(b, noOpts, "connect", f.tcp.String(), "5000")
		if r.Err != "" {
			b.Fatalf("allowed connect: %s", r.Err)
		}
		out = append(out, time.Duration(r.T1-r.T0))
	}
	return out
}
