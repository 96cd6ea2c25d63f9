// Command aegis-tray is the Aegis firewall's per-user tray icon, menu and
// prompt agent. It is started by the desktop session (XDG autostart).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/gen2brain/beeep"

	"github.com/aegisfw/aegis/tray"
)

func main() {
	level := new(slog.LevelVar)
	fs := flag.NewFlagSet("aegis-tray", flag.ContinueOnError)
	bus := fs.String("system-bus", "", "address of the helper's bus (default: the system bus)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "aegis-tray: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "aegis-tray: -log-level: %v\n", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	beeep.AppName = "Aegis"
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := tray.Run(ctx, tray.Config{SystemBus: *bus, Logger: logger}); err != nil {
		logger.Error("tray failed", "err", err)
		os.Exit(1)
	}
}
