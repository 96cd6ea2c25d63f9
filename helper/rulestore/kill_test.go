package rulestore

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aegisfw/aegis/helper/rules"
)

// Environment of the writer subprocess that TestKilledWriter re-executes
// the test binary as.
const (
	writerDirEnv   = "AEGIS_RULESTORE_WRITER_DIR"
	writerStartEnv = "AEGIS_RULESTORE_WRITER_START"
)

const killWrites = 1000

// version returns the i-th rule set the writer writes; sizes vary so that
// a torn write would show.
func version(i int) *rules.Set {
	return sampleSet(1+i%37, "v"+strconv.Itoa(i))
}

// versionOf reads back which version a set is.
func versionOf(s *rules.Set) (int, error) {
	if len(s.Apps) == 0 {
		return 0, fmt.Errorf("set has no apps")
	}
	return strconv.Atoi(strings.TrimPrefix(s.Apps[0].Package, "v"))
}

func writerConfig(dir string) Config {
	return Config{
		RulesFile: filepath.Join(dir, "etc", "rules.toml"),
		DropInDir: filepath.Join(dir, "etc", "rules.d"),
		StateDir:  filepath.Join(dir, "state"),
		UID:       os.Geteuid(),
		GID:       os.Getegid(),
	}
}

// runWriter is the subprocess: load, then write versions from start on,
// printing each version number once its Write has returned.
func runWriter(dir, start string) {
	first, err := strconv.Atoi(start)
	if err != nil {
		fmt.Println("bad start:", err)
		os.Exit(2)
	}
	s := New(writerConfig(dir))
	if _, err := s.Load(); err != nil {
		fmt.Println("load:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	for i := first; i <= killWrites; i++ {
		if err := s.Write(version(i)); err != nil {
			fmt.Println("write:", err)
			os.Exit(2)
		}
		fmt.Println(i)
	}
	os.Exit(0)
}

// TestKilledWriter kills a writing process with SIGKILL at random moments
// until 1,000 versions have been written. After every kill the rule file
// must be exactly the last version the writer finished or the one it was
// writing, never a mix, and the next start must load it without calling
// it tampering.
func TestKilledWriter(t *testing.T) {
	if dir := os.Getenv(writerDirEnv); dir != "" {
		runWriter(dir, os.Getenv(writerStartEnv))
		return
	}
	t.Parallel()
	dir := t.TempDir()
	cfg := writerConfig(dir)
	s := New(cfg)
	if _, err := s.Load(); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(version(0)); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(25 * time.Second)
	last, kills, midWrite := 0, 0, 0
	for last < killWrites {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d writes after %d kills within the time budget", last, killWrites, kills)
		}
		done, exited := runAndKill(t, dir, last+1, time.Duration(rand.IntN(25_000))*time.Microsecond)
		if !exited {
			kills++
		}

		if leftovers(cfg) {
			midWrite++
		}
		// The file on disk is whole: the finished or the next version.
		data, err := os.ReadFile(cfg.RulesFile)
		if err != nil {
			t.Fatalf("after kill %d: %v", kills, err)
		}
		set, err := rules.Parse(cfg.RulesFile, data)
		if err != nil {
			t.Fatalf("after kill %d (writer finished %d): file does not parse: %v", kills, done, err)
		}
		n, err := versionOf(set)
		if err != nil {
			t.Fatal(err)
		}
		if n != done && n != done+1 {
			t.Fatalf("after kill %d: file is version %d, writer had finished %d", kills, n, done)
		}
		if want := encode(t, version(n)); !bytes.Equal(data, want) {
			t.Fatalf("after kill %d: file is not exactly version %d", kills, n)
		}

		// A restart accepts it (possibly completing the interrupted write).
		snap, err := New(cfg).Load()
		if err != nil {
			t.Fatalf("after kill %d: Load = %v", kills, err)
		}
		m, err := versionOf(snap.Main)
		if err != nil {
			t.Fatal(err)
		}
		if m != n && m != n+1 || m > done+1 {
			t.Fatalf("after kill %d: Load gave version %d, file was %d, writer had finished %d", kills, m, n, done)
		}
		last = m
	}
	t.Logf("%d writes, %d kills, %d of them in the middle of a write", last, kills, midWrite)
	if kills < 20 || midWrite == 0 {
		t.Errorf("%d kills, %d mid-write: the writer was not interrupted enough to prove anything", kills, midWrite)
	}
}

// leftovers reports whether a killed writer left a temporary file or an
// unfinished seal (one still naming the previous content) behind.
func leftovers(cfg Config) bool {
	for _, dir := range []string{filepath.Dir(cfg.RulesFile), cfg.StateDir} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), tempInfix) {
				return true
			}
		}
	}
	b, _ := os.ReadFile(filepath.Join(cfg.StateDir, SealName))
	return bytes.Contains(b, []byte("previous"))
}

// runAndKill starts a writer at version start, lets it write for delay
// after it is ready, and kills it with SIGKILL. It returns the last
// version the writer reported finished (start-1 if none) and whether it
// exited by itself before the kill.
func runAndKill(t *testing.T, dir string, start int, delay time.Duration) (done int, exited bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriter$")
	cmd.Env = append(os.Environ(), writerDirEnv+"="+dir, writerStartEnv+"="+strconv.Itoa(start))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, killWrites+2)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	done = start - 1
	note := func(line string) {
		if n, err := strconv.Atoi(line); err == nil {
			done = n
		} else if line != "ready" {
			t.Errorf("writer: %s", line)
		}
	}
	// Wait for the writer to be ready, then give it delay to write.
	select {
	case line, ok := <-lines:
		if !ok || line != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("writer did not start: %q", line)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("writer did not start within 10 s")
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for killed := false; !killed; {
		select {
		case line, ok := <-lines:
			if !ok {
				killed, exited = true, true
				continue
			}
			note(line)
		case <-timer.C:
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	// Everything the writer printed before it died.
	for line := range lines {
		note(line)
	}
	cmd.Wait()
	return done, exited
}
