package rulestore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// BenchmarkWrite measures a sealed atomic write of a 500-app rule set,
// and reports it as a ratio to a single atomic write (temp file, fsync,
// rename, fsync of the directory) of the same bytes measured in the same
// run: the cost of sealing and of the last-good copy.
func BenchmarkWrite(b *testing.B) {
	e := newTestEnv(b)
	s := e.store(b)
	set := sampleSet(500, "bench")
	data := encode(b, set)

	base := filepath.Join(b.TempDir(), "baseline.toml")
	const rounds = 50
	start := time.Now()
	for range rounds {
		if err := writeAtomic(base, data, e.cfg.UID, e.cfg.GID); err != nil {
			b.Fatal(err)
		}
	}
	baseline := time.Since(start) / rounds

	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		if err := s.Write(set); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(baseline.Microseconds()), "baseline-µs")
	b.ReportMetric(float64(per)/float64(baseline), "x-atomic-write")
}

// BenchmarkTamperDetect measures the latency from a foreign write of the
// rule file to the Tampered event (after the file has been restored). It
// reports the mean in ms against the 100 ms goal, and as a ratio to the
// time a bare fsnotify watcher takes to see the same write.
func BenchmarkTamperDetect(b *testing.B) {
	e := newTestEnv(b)
	s := e.store(b)
	if err := s.Write(sampleSet(50, "bench")); err != nil {
		b.Fatal(err)
	}
	foreign := []byte("version = 1\n[settings]\nmode = \"learning\"\n")

	baseline := fsnotifyLatency(b, foreign)

	events := make(chan Event, 16)
	w, err := s.Watch(func(ev Event) { events <- ev })
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ResetTimer()
	var total, worst time.Duration
	for b.Loop() {
		start := time.Now()
		if err := os.WriteFile(e.rules, foreign, 0o600); err != nil {
			b.Fatal(err)
		}
		select {
		case <-events:
		case <-time.After(10 * time.Second):
			b.Fatal("no Tampered event within 10 s")
		}
		d := time.Since(start)
		total += d
		worst = max(worst, d)
		b.StopTimer()
		drain(events)
		b.StartTimer()
	}
	b.StopTimer()
	mean := total / time.Duration(b.N)
	b.ReportMetric(float64(mean)/float64(time.Millisecond), "ms/detect")
	b.ReportMetric(float64(worst)/float64(time.Millisecond), "max-ms")
	b.ReportMetric(float64(mean)/float64(100*time.Millisecond), "x-goal-100ms")
	b.ReportMetric(float64(mean)/float64(baseline), "x-bare-fsnotify")
}

// drain discards events a single foreign write may still cause (the
// writer's data landing in the moved-aside file) until none arrive for a
// moment.
func drain(events chan Event) {
	for {
		select {
		case <-events:
		case <-time.After(20 * time.Millisecond):
			return
		}
	}
}

// fsnotifyLatency is the mean time from a write to its fsnotify event in
// a directory watched by a bare watcher.
func fsnotifyLatency(b *testing.B, data []byte) time.Duration {
	dir := b.TempDir()
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		b.Fatal(err)
	}
	defer fw.Close()
	if err := fw.Add(dir); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "f")
	const rounds = 200
	var total time.Duration
	for range rounds {
		start := time.Now()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
		<-fw.Events
		total += time.Since(start)
		for quiet := false; !quiet; {
			select {
			case <-fw.Events:
			case <-time.After(5 * time.Millisecond):
				quiet = true
			}
		}
	}
	return total / rounds
}
