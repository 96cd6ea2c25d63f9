//go:build linux

// Package bpf is Aegis's kernel datapath: eBPF programs on a cgroup that
// attribute every outgoing TCP and UDP connection to the executable that
// made it, decide known apps in the kernel, hold unknown ones while their
// user is asked, and keep enforcing while no helper runs.
//
// The programs and maps are pinned under a versioned bpffs directory, so
// enforcement outlives the process that loaded them; a later Open adopts
// the pins and swaps in its own programs without a gap. Nothing of the
// cilium/ebpf API escapes this package: callers speak in ExeKeys, verdicts,
// destinations and events.
package bpf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// LayoutVersion names the pin directory of this map layout. A helper with
// another layout pins elsewhere and never loads incompatible maps.
const LayoutVersion = 1

// DefaultPinRoot is where production pins live (below it: v<LayoutVersion>).
const DefaultPinRoot = "/sys/fs/bpf/aegis"

// Options configure Open.
type Options struct {
	// Cgroup is the cgroup v2 directory whose sockets are guarded. Empty
	// means the root of the first cgroup2 mount, which covers a whole
	// desktop. Tests must pass a child cgroup they created.
	Cgroup string
	// PinRoot is a directory on a bpffs; links and maps are pinned in its
	// subdirectory v<LayoutVersion>. Empty means DefaultPinRoot.
	PinRoot string
	// Unpinned loads private maps and links that die with the process.
	Unpinned bool
	// RingBufferSize is the event ring buffer size in bytes: a power of two
	// and a multiple of the page size. Zero keeps the compiled 1 MiB.
	RingBufferSize uint32
	// Logger receives lifecycle messages; nil discards them.
	Logger *slog.Logger
}

// cgroupProgs are the cgroup-attached programs, by pin name.
var cgroupProgs = []string{
	"sock_create", "connect4", "connect6", "sendmsg4", "sendmsg6", "egress", "ingress", "sockops",
}

// Datapath is the loaded and attached datapath.
type Datapath struct {
	log     *slog.Logger
	objs    aegisObjects
	links   map[string]link.Link
	pinDir  string
	cgroup  string
	adopted bool
	ring    *ringbuf.Reader
	killMu  sync.Mutex
	closed  bool
}

// FirstCgroup2Mount returns the mount point of the first cgroup2 file
// system in /proc/mounts.
func FirstCgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup2 file system is mounted")
}

// Open loads the datapath and attaches it to the cgroup, adopting pinned
// links and maps left by an earlier process when there are any.
func Open(opts Options) (_ *Datapath, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Cgroup == "" {
		if opts.Cgroup, err = FirstCgroup2Mount(); err != nil {
			return nil, err
		}
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	spec, err := loadAegis()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if opts.RingBufferSize != 0 {
		spec.Maps["events"].MaxEntries = opts.RingBufferSize
	}
	d := &Datapath{log: log, links: map[string]link.Link{}, cgroup: opts.Cgroup}
	var collOpts ebpf.CollectionOptions
	if opts.Unpinned {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		root := opts.PinRoot
		if root == "" {
			root = DefaultPinRoot
		}
		d.pinDir = filepath.Join(root, fmt.Sprintf("v%d", LayoutVersion))
		if err := ensureBPFFS(root); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d.pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
		collOpts.Maps.PinPath = d.pinDir
	}
	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load datapath: %w (verifier: %s)", err, strings.Join(tail(ve.Log, 6), " | "))
		}
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	defer func() {
		if err != nil {
			d.closeAll()
		}
	}()
	if err := d.attach(spec); err != nil {
		return nil, err
	}
	if !d.adopted {
		if err := d.SetConfig(DefaultConfig()); err != nil {
			return nil, err
		}
	}
	// Loading is a sign of life: the fail mode must not strike before the
	// caller's first Watch.
	if err := d.Beat(); err != nil {
		return nil, err
	}
	if d.ring, err = ringbuf.NewReader(d.objs.Events); err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	log.Info("datapath attached", "cgroup", d.cgroup, "pins", d.pinDir, "adopted", d.adopted)
	return d, nil
}

// Adopted reports whether Open took over links pinned by another process.
func (d *Datapath) Adopted() bool { return d.adopted }

func (d *Datapath) programs() map[string]*ebpf.Program {
	p := d.objs.aegisPrograms
	return map[string]*ebpf.Program{
		"sock_create": p.AegisSockCreate, "connect4": p.AegisConnect4, "connect6": p.AegisConnect6,
		"sendmsg4": p.AegisSendmsg4, "sendmsg6": p.AegisSendmsg6, "egress": p.AegisEgress,
		"ingress": p.AegisIngress, "sockops": p.AegisSockops,
	}
}

func (d *Datapath) attach(spec *ebpf.CollectionSpec) error {
	cgID, err := cgroupID(d.cgroup)
	if err != nil {
		return err
	}
	level, err := cgroupLevel(d.cgroup)
	if err != nil {
		return err
	}
	if err := d.objs.Guarded.Put(uint32(0), aegisGuard{CgroupId: cgID, Level: level}); err != nil {
		return fmt.Errorf("record the guarded cgroup: %w", err)
	}
	progs := d.programs()
	for _, name := range cgroupProgs {
		prog := progs[name]
		pin := ""
		if d.pinDir != "" {
			pin = filepath.Join(d.pinDir, "link_"+name)
			if l, err := link.LoadPinnedLink(pin, nil); err == nil {
				if err := checkLinkCgroup(l, cgID); err != nil {
					l.Close()
					return fmt.Errorf("adopt %s: %w", pin, err)
				}
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("swap program of pinned link %s: %w", name, err)
				}
				d.links[name] = l
				d.adopted = true
				continue
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("load pinned link %s: %w", name, err)
			}
		}
		l, err := link.AttachCgroup(link.CgroupOptions{
			Path:    d.cgroup,
			Attach:  spec.Programs["aegis_"+name].AttachType,
			Program: prog,
		})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, d.cgroup, err)
		}
		d.links[name] = l
		if pin != "" {
			if err := l.Pin(pin); err != nil {
				return fmt.Errorf("pin link %s: %w", name, err)
			}
		}
	}
	return nil
}

// bpffsMount is where systems mount the BPF file system.
const bpffsMount = "/sys/fs/bpf"

// ensureBPFFS checks that dir is (or will be created) on a BPF file
// system, mounting one at /sys/fs/bpf when dir is below it and nothing is
// mounted there yet, as on systems without systemd.
func ensureBPFFS(dir string) error {
	p := filepath.Clean(dir)
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(p, &fs)
		if err == nil {
			if fs.Type == unix.BPF_FS_MAGIC {
				return nil
			}
			break
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return fmt.Errorf("statfs %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
	if p != bpffsMount && !strings.HasPrefix(filepath.Clean(dir), bpffsMount+"/") {
		return fmt.Errorf("pin root %s is not on a BPF file system", dir)
	}
	if err := unix.Mount("bpf", bpffsMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount the BPF file system at %s: %w", bpffsMount, err)
	}
	return nil
}

func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("statfs cgroup: %w", err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not a cgroup v2 directory", path)
	}
	return st.Ino, nil
}

// cgroupLevel returns the depth of a cgroup v2 directory below the root
// of its hierarchy (the root is level 0).
func cgroupLevel(path string) (uint32, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return 0, fmt.Errorf("read mounts: %w", err)
	}
	path = filepath.Clean(path)
	best := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "cgroup2" {
			continue
		}
		if (path == f[1] || strings.HasPrefix(path, f[1]+"/") || f[1] == "/") && len(f[1]) > len(best) {
			best = f[1]
		}
	}
	if best == "" {
		return 0, fmt.Errorf("%s is not below a cgroup2 mount", path)
	}
	rel, err := filepath.Rel(best, path)
	if err != nil {
		return 0, fmt.Errorf("cgroup level of %s: %w", path, err)
	}
	if rel == "." {
		return 0, nil
	}
	return uint32(len(strings.Split(rel, "/"))), nil
}

func checkLinkCgroup(l link.Link, want uint64) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("link info: %w", err)
	}
	cg := info.Cgroup()
	if cg == nil {
		return errors.New("pinned link is not a cgroup link")
	}
	if cg.CgroupId != want {
		return fmt.Errorf("pinned datapath guards cgroup %d, not %d: uninstall it first", cg.CgroupId, want)
	}
	return nil
}

// Close releases this process's handles. Pinned links and maps stay, so
// enforcement continues until another process adopts them or Uninstall.
func (d *Datapath) Close() error {
	d.closeAll()
	return nil
}

func (d *Datapath) closeAll() {
	if d.closed {
		return
	}
	d.closed = true
	if d.ring != nil {
		d.ring.Close()
	}
	for _, l := range d.links {
		l.Close()
	}
	d.objs.Close()
}

// Uninstall detaches every program, removes every pin and closes d.
func (d *Datapath) Uninstall() error {
	var errs []error
	names := make([]string, 0, len(d.links))
	for n := range d.links {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		l := d.links[n]
		if d.pinDir != "" {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin link %s: %w", n, err))
			}
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", n, err))
		}
	}
	d.links = map[string]link.Link{}
	if d.pinDir != "" {
		m := d.objs.aegisMaps
		for _, mp := range []*ebpf.Map{m.Apps, m.Cfg, m.Cidrs, m.Counters, m.Decisions, m.Dests,
			m.Events, m.Guarded, m.Heartbeat, m.Kill, m.Pending, m.Reported, m.Revoke, m.SkState} {
			if err := mp.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin map: %w", err))
			}
		}
		if err := os.Remove(d.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
		}
	}
	d.closeAll()
	return errors.Join(errs...)
}

// runKillIterators destroys the sockets listed in the kill map.
func (d *Datapath) runKillIterators() error {
	d.killMu.Lock()
	defer d.killMu.Unlock()
	return d.runIterators(d.objs.AegisKillTcp, d.objs.AegisKillUdp)
}

// runIterators runs each iterator program over its kernel objects once.
func (d *Datapath) runIterators(progs ...*ebpf.Program) error {
	for _, p := range progs {
		it, err := link.AttachIter(link.IterOptions{Program: p})
		if err != nil {
			return fmt.Errorf("attach iterator: %w", err)
		}
		rd, err := it.Open()
		if err != nil {
			it.Close()
			return fmt.Errorf("open iterator: %w", err)
		}
		_, err = io.Copy(io.Discard, rd)
		rd.Close()
		it.Close()
		if err != nil {
			return fmt.Errorf("run iterator: %w", err)
		}
	}
	return nil
}

func tail(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
