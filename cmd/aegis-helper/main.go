// Command aegis-helper is Aegis's root daemon: it guards every
// connection of the machine with the eBPF datapath, asks users about
// unknown apps through the system D-Bus API, and keeps the rule file.
// It runs in the foreground, logging to standard error; under systemd it
// supports Type=dbus and Type=notify. SIGTERM and SIGINT stop it cleanly
// with enforcement left pinned; --uninstall detaches and unpins.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/daemon"
	"github.com/aegisfw/aegis/helper/rulestore"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("aegis-helper", flag.ContinueOnError)
	var cfg daemon.Config
	var agents listFlag
	var level slog.LevelVar
	var uninstall bool
	fs.StringVar(&cfg.Cgroup, "cgroup", "", "cgroup v2 directory to guard (default: the first cgroup2 mount)")
	fs.StringVar(&cfg.PinRoot, "pin-root", bpf.DefaultPinRoot, "bpffs directory for pinned links and maps")
	fs.StringVar(&cfg.RulesFile, "rules", rulestore.DefaultRulesFile, "rule file")
	fs.StringVar(&cfg.DropInDir, "rules-dir", rulestore.DefaultDropInDir, "drop-in directory of read-only rule files")
	fs.StringVar(&cfg.StateDir, "state-dir", rulestore.DefaultStateDir, "state directory (seal and last good rules)")
	fs.StringVar(&cfg.BusAddress, "bus", "", "D-Bus address to serve on (default: the system bus)")
	fs.Var(&agents, "trusted-agent", "executable that may answer prompts (repeatable; default: /usr/bin/aegis-tray and /usr/bin/aegisctl)")
	fs.DurationVar(&cfg.PromptTimeout, "prompt-timeout", 0, "override the rule file's prompt timeout")
	fs.IntVar(&cfg.MaxFlows, "max-flows", 0, "bound on the flow table (default 4096)")
	fs.TextVar(&level, "log-level", &level, "log level: debug, info, warn or error")
	fs.BoolVar(&uninstall, "uninstall", false, "detach the datapath, remove its pins and exit")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "aegis-helper: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if len(agents) > 0 {
		cfg.TrustedAgents = agents
	}
	cfg.NotifySocket = os.Getenv("NOTIFY_SOCKET")
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))

	if uninstall {
		if err := daemon.Uninstall(cfg); err != nil {
			cfg.Logger.Error("uninstall failed", "err", err)
			return 1
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("helper failed", "err", err)
		return 1
	}
	return 0
}
