//go:build linux

package bpf

import (
	"slices"
	"strconv"
	"testing"

	"github.com/aegisfw/aegis/internal/kerneltest"
)

// benchPair is two child cgroups: one bare (the baseline) and one guarded
// by the datapath with the client trusted, so both are measured in the
// same run with interleaved rounds.
type benchPair struct {
	bare, guarded *kerneltest.Cgroup
}

func newBenchPair(b *testing.B) *benchPair {
	b.Helper()
	kerneltest.Require(b)
	p := &benchPair{
		bare:    kerneltest.NewCgroupNamed(b, "bare"),
		guarded: kerneltest.NewCgroupNamed(b, "guarded"),
	}
	dp, err := Open(Options{Cgroup: p.guarded.Path, Unpinned: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Close() })
	self := ExeKeyOf(kerneltest.ExeStat(b, mustExecutable(b)))
	if err := dp.SetApp(self, AnyUID, App{ID: 1, Verdict: VerdictAllow}); err != nil {
		b.Fatal(err)
	}
	return p
}

// interleave runs op in the bare and the guarded cgroup, one after the
// other (alternating which goes first), for rounds rounds. It returns the median cost per unit in each
// and the median of the per-round ratios guarded/bare, which cancels the
// drift of a shared machine better than a ratio of medians.
func (p *benchPair) interleave(b *testing.B, rounds int, op ...string) (bare, guarded, ratio float64) {
	b.Helper()
	var bs, gs, rs []float64
	for i := 0; i < rounds; i++ {
		var per [2]float64
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0} // alternate which goes first
		}
		for _, j := range order {
			r := []*kerneltest.Cgroup{p.bare, p.guarded}[j].Run(b, noOpts, op...)
			if r.Err != "" {
				b.Fatalf("%v: %s", op, r.Err)
			}
			per[j] = float64(r.T1-r.T0) / float64(r.N)
		}
		bs, gs, rs = append(bs, per[0]), append(gs, per[1]), append(rs, per[1]/per[0])
	}
	return median(bs), median(gs), median(rs)
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}

// BenchmarkConnect measures connect()+RST close from a trusted app in the
// guarded cgroup against the same loop in a bare cgroup.
func BenchmarkConnect(b *testing.B) {
	p := newBenchPair(b)
	dst := kerneltest.ListenTCP(b, "127.0.0.1:0").String()
	const perRound = 20000
	for i := 0; i < b.N; i++ {
		bare, guarded, ratio := p.interleave(b, 11, "bench", dst, strconv.Itoa(perRound))
		b.ReportMetric(bare/1e3, "bare-µs/connect")
		b.ReportMetric(guarded/1e3, "guarded-µs/connect")
		b.ReportMetric(ratio, "ratio")
	}
}

// BenchmarkThroughput measures bulk TCP over loopback from a trusted app
// (every packet passes the egress and ingress programs) against a bare
// cgroup; the ratio is guarded throughput over bare throughput.
func BenchmarkThroughput(b *testing.B) {
	p := newBenchPair(b)
	dst := kerneltest.ListenTCP(b, "127.0.0.1:0").String()
	const mib = 1024
	for i := 0; i < b.N; i++ {
		bare, guarded, ratio := p.interleave(b, 15, "bulk", dst, strconv.Itoa(mib))
		// Costs are ns per byte; throughput is their inverse.
		b.ReportMetric(1e9/bare/(1<<20), "bare-MiB/s")
		b.ReportMetric(1e9/guarded/(1<<20), "guarded-MiB/s")
		b.ReportMetric(1/ratio, "ratio")
	}
}
