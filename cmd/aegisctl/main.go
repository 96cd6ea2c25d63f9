// Command aegisctl controls aegis-helper from a terminal: status, mode,
// apps, rules, prompts and flows, with --json for scripts. See
// "aegisctl help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/aegisfw/aegis/helper/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, ctl.IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr, UID: -1}, os.Args[1:])
	stop()
	os.Exit(code)
}
