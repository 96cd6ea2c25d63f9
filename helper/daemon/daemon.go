// Package daemon is aegis-helper's wiring: it opens the pinned datapath,
// builds the rule store, trust registry and firewall engine, serves them
// on the bus, and runs until its context ends, leaving enforcement pinned.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/authz"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/firewall"
	"github.com/aegisfw/aegis/helper/proc"
	"github.com/aegisfw/aegis/helper/rulestore"
)

// The engine and the server are made for each other.
var (
	_ dbusapi.Backend   = (*firewall.Engine)(nil)
	_ firewall.Prompter = (*dbusapi.Server)(nil)
	_ firewall.Signals  = (*dbusapi.Server)(nil)
)

// Config says where the helper finds everything. The zero value of each
// field selects the production default.
type Config struct {
	// Cgroup is the cgroup v2 directory guarded; default the first
	// cgroup2 mount (the whole machine).
	Cgroup string
	// PinRoot is the bpffs directory holding the pins; default
	// bpf.DefaultPinRoot.
	PinRoot string
	// RulesFile, DropInDir and StateDir are the rule store's paths;
	// defaults rulestore.DefaultRulesFile, DefaultDropInDir and
	// DefaultStateDir.
	RulesFile string
	DropInDir string
	StateDir  string
	// BusAddress is the bus to serve on; default the system bus
	// (DBUS_SYSTEM_BUS_ADDRESS or its standard socket).
	BusAddress string
	// TrustedAgents are the executables that may register as prompt
	// agents; nil means dbusapi.DefaultTrustedAgents.
	TrustedAgents []string
	// PromptTimeout overrides the rule file's prompt timeout when nonzero.
	PromptTimeout time.Duration
	// MaxFlows bounds the flow table; default firewall.DefaultMaxFlows.
	MaxFlows int
	// Heartbeat is the datapath heartbeat interval; default 1 s.
	Heartbeat time.Duration
	// ProcRoot is the procfs mount; default /proc.
	ProcRoot string
	// NotifySocket is systemd's notification socket (NOTIFY_SOCKET);
	// when set, Run sends READY=1 once the bus name is owned and
	// STOPPING=1 when it stops.
	NotifySocket string
	// Logger receives everything the helper logs. Required.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Logger == nil {
		return c, errors.New("config: Logger is required")
	}
	if c.Cgroup == "" {
		cg, err := bpf.FirstCgroup2Mount()
		if err != nil {
			return c, fmt.Errorf("config: find the cgroup2 mount: %w", err)
		}
		c.Cgroup = cg
	}
	if c.PinRoot == "" {
		c.PinRoot = bpf.DefaultPinRoot
	}
	if c.RulesFile == "" {
		c.RulesFile = rulestore.DefaultRulesFile
	}
	if c.DropInDir == "" {
		c.DropInDir = rulestore.DefaultDropInDir
	}
	if c.StateDir == "" {
		c.StateDir = rulestore.DefaultStateDir
	}
	if c.TrustedAgents == nil {
		c.TrustedAgents = dbusapi.DefaultTrustedAgents()
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	for name, p := range map[string]string{"cgroup": c.Cgroup, "pin root": c.PinRoot, "rules file": c.RulesFile,
		"drop-in directory": c.DropInDir, "state directory": c.StateDir, "proc root": c.ProcRoot} {
		if !filepath.IsAbs(p) {
			return c, fmt.Errorf("config: %s %q is not an absolute path", name, p)
		}
	}
	if c.PromptTimeout < 0 || c.Heartbeat < 0 || c.MaxFlows < 0 {
		return c, errors.New("config: prompt timeout, heartbeat and max flows must not be negative")
	}
	return c, nil
}

// Run runs the helper until ctx ends, then stops cleanly: pinned links and
// maps stay, so the kernel keeps enforcing the rules (and applies the
// fail mode to unknown apps once the heartbeat stops) until the next
// helper adopts them.
//
// Start order: the datapath (adopting pins), the rule store and the
// trust registry, the engine (which loads the rules; a rule file refused
// as tampered is replaced by the last good one and signalled once the
// bus is up), the D-Bus server, whose name is requested last so that a
// bus-activated or Type=dbus start is ready when the name appears, and
// finally the engine's event loop. Run also returns, with an error, when
// the bus connection is lost.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return fmt.Errorf("run helper: %w", err)
	}
	log := cfg.Logger
	dp, err := bpf.Open(bpf.Options{Cgroup: cfg.Cgroup, PinRoot: cfg.PinRoot, Logger: log.With("component", "datapath")})
	if err != nil {
		return fmt.Errorf("run helper: open datapath: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("close datapath", dp.Close())) }()
	log.Info("datapath open", "cgroup", cfg.Cgroup, "pin_root", cfg.PinRoot, "adopted", dp.Adopted())

	store := rulestore.New(rulestore.Config{
		RulesFile: cfg.RulesFile, DropInDir: cfg.DropInDir, StateDir: cfg.StateDir,
		Logger: log,
	})
	// The engine registers the rules' apps once it has loaded them.
	reg, err := apps.New(apps.Config{Logger: log}, nil)
	if err != nil {
		return fmt.Errorf("run helper: trust registry: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("close trust registry", reg.Close())) }()

	eng, err := firewall.New(firewall.Config{
		Datapath: dp, Registry: reg, Store: store, Proc: proc.FS{Root: cfg.ProcRoot}, Logger: log,
		PromptTimeout: cfg.PromptTimeout, MaxFlows: cfg.MaxFlows, Heartbeat: cfg.Heartbeat,
	})
	if err != nil {
		return fmt.Errorf("run helper: %w", err)
	}

	conn, err := dbusapi.Dial(cfg.BusAddress)
	if err != nil {
		return fmt.Errorf("run helper: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("close bus connection", conn.Close())) }()
	srv, err := dbusapi.NewServer(conn, dbusapi.Config{
		Backend:       eng,
		Authorizer:    authz.New(conn, log),
		TrustedAgents: cfg.TrustedAgents,
		Logger:        log,
		ProcRoot:      cfg.ProcRoot,
	})
	if err != nil {
		return fmt.Errorf("run helper: %w", err)
	}
	eng.SetPrompter(srv)
	eng.SetSignals(srv)
	if err := srv.Start(ctx); err != nil {
		return fmt.Errorf("run helper: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("stop api", srv.Close())) }()

	if err := notify(cfg.NotifySocket, "READY=1\nSTATUS=serving "+dbusapi.BusName); err != nil {
		log.Warn("notify systemd", "err", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan struct{})
	go func() {
		select {
		case <-conn.Context().Done():
			close(lost)
			cancel()
		case <-runCtx.Done():
		}
	}()
	err = eng.Run(runCtx)
	if nerr := notify(cfg.NotifySocket, "STOPPING=1"); nerr != nil {
		log.Warn("notify systemd", "err", nerr)
	}
	select {
	case <-lost:
		if ctx.Err() == nil {
			return errors.Join(err, errors.New("run helper: bus connection lost"))
		}
	default:
	}
	if err != nil {
		return fmt.Errorf("run helper: %w", err)
	}
	log.Info("stopped; enforcement stays pinned", "pin_root", cfg.PinRoot)
	return nil
}

func closeErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// PinDir returns the directory under cfg's pin root that holds this
// layout's pins.
func PinDir(cfg Config) string {
	root := cfg.PinRoot
	if root == "" {
		root = bpf.DefaultPinRoot
	}
	return filepath.Join(root, "v"+strconv.Itoa(bpf.LayoutVersion))
}

// Uninstall detaches the pinned datapath and removes its pins: the kernel
// stops enforcing. It does nothing when nothing is pinned. A running
// helper should be stopped first.
func Uninstall(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	dir := PinDir(cfg)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		cfg.Logger.Info("nothing pinned; nothing to uninstall", "path", dir)
		return nil
	}
	dp, err := bpf.Open(bpf.Options{Cgroup: cfg.Cgroup, PinRoot: cfg.PinRoot, Logger: cfg.Logger.With("component", "datapath")})
	if err != nil {
		return fmt.Errorf("uninstall: open datapath: %w", err)
	}
	if err := dp.Uninstall(); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	cfg.Logger.Info("datapath detached and unpinned", "path", dir)
	return nil
}
