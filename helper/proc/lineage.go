package proc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// MaxLineage bounds the number of processes [FS.Lineage] returns.
const MaxLineage = 64

// Process is what a person needs to recognise a process: who runs it, what
// it runs and how it was started.
type Process struct {
	PID, PPID int
	// UID is the real user id.
	UID  uint32
	Comm string
	// Exe is the executable's path as the kernel prints it; empty for kernel
	// threads and when it cannot be read. ExeDeleted: the file was unlinked.
	Exe        string
	ExeDeleted bool
	Cmdline    []string
	StartTicks uint64
	// Interpreter is set when Exe is a known interpreter.
	Interpreter *Interpreter
}

// LogValue renders p for log/slog with the house keys.
func (p Process) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Int("pid", p.PID),
		slog.Int("ppid", p.PPID),
		slog.Uint64("uid", uint64(p.UID)),
		slog.String("exe", p.Exe),
	}
	if p.Interpreter != nil && p.Interpreter.Script != "" {
		attrs = append(attrs, slog.String("script", p.Interpreter.Script))
	}
	return slog.GroupValue(attrs...)
}

// String formats p as "comm(pid)", the form used in lineage chains.
func (p Process) String() string { return fmt.Sprintf("%s(%d)", p.Comm, p.PID) }

// Process reads the facts of one process. A process that does not exist is
// [ErrGone]; an executable link that is missing (kernel thread, zombie) or
// unreadable (not root) leaves Exe empty.
func (fs FS) Process(pid int) (Process, error) {
	st, err := fs.Stat(pid)
	if err != nil {
		return Process{}, err
	}
	status, err := fs.Status(pid)
	if err != nil {
		return Process{}, err
	}
	argv, err := fs.Cmdline(pid)
	if err != nil {
		return Process{}, err
	}
	p := Process{
		PID:        st.PID,
		PPID:       st.PPID,
		UID:        status.UID,
		Comm:       st.Comm,
		Cmdline:    argv,
		StartTicks: st.StartTicks,
	}
	p.Exe, p.ExeDeleted, err = fs.ExePath(pid)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrPermission) {
		return Process{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.Interpreter = DetectInterpreter(p.Exe, argv)
	return p, nil
}

// Lineage returns process pid followed by its ancestors, child first, up
// to pid 1 or the first process whose parent is 0 (the top of a PID
// namespace, or a kernel thread). It stops after [MaxLineage] processes, at
// a PID seen before, and at an ancestor that vanished or whose PID was
// reused (it started after its child): the chain then ends there, without
// error. Only pid itself must exist: if it does not, the error is
// [ErrGone].
func (fs FS) Lineage(pid int) ([]Process, error) {
	var chain []Process
	seen := make(map[int]bool)
	for next := pid; next > 0 && len(chain) < MaxLineage && !seen[next]; {
		seen[next] = true
		p, err := fs.Process(next)
		if err != nil {
			if len(chain) == 0 {
				return nil, fmt.Errorf("lineage of pid %d: %w", pid, err)
			}
			if errors.Is(err, ErrGone) {
				break
			}
			return nil, fmt.Errorf("lineage of pid %d: ancestor %d: %w", pid, next, err)
		}
		if len(chain) > 0 && p.StartTicks > chain[len(chain)-1].StartTicks {
			break // the parent exited and its PID went to a newer process
		}
		chain = append(chain, p)
		next = p.PPID
	}
	return chain, nil
}

// FormatLineage writes a chain from [FS.Lineage] root first, the way people
// read it: "systemd → bash → curl".
func FormatLineage(chain []Process) string {
	var b strings.Builder
	for i := len(chain) - 1; i >= 0; i-- {
		b.WriteString(chain[i].Comm)
		if i > 0 {
			b.WriteString(" → ")
		}
	}
	return b.String()
}
