// Package ctl is aegisctl, the terminal client of aegis-helper: it parses a
// command line, calls the helper through dbusapi.Client and prints tables
// or JSON.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/aegisfw/aegis/helper/dbusapi"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// IO is where a command reads and writes, and the environment it sees.
type IO struct {
	In       io.Reader
	Out, Err io.Writer
	// Getenv reads the environment (EDITOR, VISUAL, DBUS_SYSTEM_BUS_ADDRESS);
	// nil means os.Getenv.
	Getenv func(string) string
	// UID is the invoking user, the default user of allow, deny and
	// forget; negative means os.Getuid().
	UID int
}

// Usage is the command summary printed by help and on usage errors.
const Usage = `usage: aegisctl [--json] [--bus ADDRESS] [--non-interactive] COMMAND [ARGS]

commands:
  status                          mode, counts and counters
  mode learning|enforce           switch the mode
  apps                            registered apps with their hash state
  rehash PATH | --all             trust the current file of one or every app
  allow PATH [--user UID|any]     trust an executable (default user: you; root: any)
  deny PATH [--user UID|any]      refuse an executable
  forget PATH [--user UID|any]    remove the rule for an executable
  rules show                      the rules in force
  rules export                    print the rule file
  rules import FILE|-             replace the rule file
  rules edit                      edit the rule file with $EDITOR, validated before import
  learned                         apps recorded in learning mode
  adopt PATH... | --all           turn learned apps into allow rules
  prompts                         pending prompts about your processes
  answer ID allow|deny [--scope once|until-quit|always|always-all-users]
  flows                           the connection table
  watch                           print the helper's signals as they come
  agent                           show prompts as they come (answer with "answer")

--json prints JSON for scripts; --bus talks to another bus than the system bus;
--non-interactive never lets polkit ask for a password.
`

// errUsage marks a usage error; its text is printed with the usage.
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errUsage)
}

// command is one invocation: parsed flags, the client and the output.
type command struct {
	io     IO
	client *dbusapi.Client
	conn   *dbus.Conn
	json   bool
	user   string
	scope  string
	all    bool
	args   []string
}

// flagSpec lists the flags every command accepts; bool flags take no value.
var flagSpec = map[string]bool{
	"json": true, "non-interactive": true, "all": true, "help": true, "h": true,
	"bus": false, "user": false, "scope": false,
}

// splitArgs moves flags (wherever they are) in front of the positional
// arguments, so "allow PATH --user 1000" parses like "--user 1000 allow PATH".
func splitArgs(args []string) (flags, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(rest, args[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' {
			rest = append(rest, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		name, _, hasValue := strings.Cut(name, "=")
		isBool, ok := flagSpec[name]
		if !ok {
			return nil, nil, usageErr("unknown flag %s", a)
		}
		flags = append(flags, a)
		if !isBool && !hasValue {
			if i+1 >= len(args) {
				return nil, nil, usageErr("flag %s needs a value", a)
			}
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, rest, nil
}

// Run runs one aegisctl command line (without the program name) and
// returns the exit code. Errors are printed to io.Err.
func Run(ctx context.Context, sio IO, args []string) int {
	if sio.Getenv == nil {
		sio.Getenv = os.Getenv
	}
	if sio.UID < 0 {
		sio.UID = os.Getuid()
	}
	if sio.In == nil {
		sio.In = strings.NewReader("")
	}
	err := run(ctx, sio, args)
	switch {
	case err == nil:
		return ExitOK
	case err == errUsage: // the usage was printed already
		return ExitUsage
	case errors.Is(err, errUsage):
		fmt.Fprintf(sio.Err, "aegisctl: %s\nrun \"aegisctl help\" for usage\n", strings.TrimSuffix(err.Error(), ": "+errUsage.Error()))
		return ExitUsage
	default:
		fmt.Fprintf(sio.Err, "aegisctl: %v\n", err)
		if errors.Is(err, dbusapi.ErrNotAuthorized) {
			fmt.Fprintln(sio.Err, "aegisctl: this needs an administrator; polkit refused it")
		}
		return ExitError
	}
}

func run(ctx context.Context, sio IO, args []string) error {
	flagArgs, rest, err := splitArgs(args)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("aegisctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := &command{io: sio}
	var bus string
	var nonInteractive, help bool
	fs.BoolVar(&c.json, "json", false, "")
	fs.BoolVar(&nonInteractive, "non-interactive", false, "")
	fs.BoolVar(&c.all, "all", false, "")
	fs.BoolVar(&help, "help", false, "")
	fs.BoolVar(&help, "h", false, "")
	fs.StringVar(&bus, "bus", "", "")
	fs.StringVar(&c.user, "user", "", "")
	fs.StringVar(&c.scope, "scope", string(dbusapi.Once), "")
	if err := fs.Parse(flagArgs); err != nil {
		return usageErr("%v", err)
	}
	if help || len(rest) == 0 || rest[0] == "help" {
		if len(rest) == 0 && !help {
			fmt.Fprint(sio.Err, Usage)
			return errUsage
		}
		fmt.Fprint(sio.Out, Usage)
		return nil
	}
	name := rest[0]
	c.args = rest[1:]
	h, ok := commands[name]
	if !ok {
		return usageErr("unknown command %q", name)
	}
	if err := h.check(c); err != nil {
		return err
	}
	conn, err := dbusapi.Dial(bus)
	if err != nil {
		return err
	}
	defer conn.Close()
	c.conn = conn
	c.client = dbusapi.NewClient(conn, !nonInteractive)
	return h.run(ctx, c)
}

// handler is one command: check validates the arguments before anything
// is sent, run does the work.
type handler struct {
	check func(c *command) error
	run   func(ctx context.Context, c *command) error
}

func nargs(min, max int, what string) func(c *command) error {
	return func(c *command) error {
		if len(c.args) < min || (max >= 0 && len(c.args) > max) {
			return usageErr("want %s", what)
		}
		return nil
	}
}

var commands = map[string]handler{
	"status":  {nargs(0, 0, "no arguments"), status},
	"mode":    {checkMode, setMode},
	"apps":    {nargs(0, 0, "no arguments"), listApps},
	"rehash":  {checkRehash, rehash},
	"allow":   {checkVerdict, setVerdict(dbusapi.Allow)},
	"deny":    {checkVerdict, setVerdict(dbusapi.Deny)},
	"forget":  {checkVerdict, forget},
	"rules":   {checkRules, rulesCmd},
	"learned": {nargs(0, 0, "no arguments"), listLearned},
	"adopt":   {checkAdopt, adopt},
	"prompts": {nargs(0, 0, "no arguments"), listPrompts},
	"answer":  {checkAnswer, answer},
	"flows":   {nargs(0, 0, "no arguments"), listFlows},
	"watch":   {nargs(0, 0, "no arguments"), watch},
	"agent":   {nargs(0, 0, "no arguments"), runAgent},
}

// printJSON writes v as indented JSON.
func (c *command) printJSON(v any) error {
	enc := json.NewEncoder(c.io.Out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}

// done prints a confirmation, or a JSON object for scripts.
func (c *command) done(msg string, v any) error {
	if c.json {
		return c.printJSON(v)
	}
	fmt.Fprintln(c.io.Out, msg)
	return nil
}

func status(ctx context.Context, c *command) error {
	st, err := c.client.Status(ctx)
	if err != nil {
		return err
	}
	cs, err := c.client.Counters(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(struct {
			Status   dbusapi.Status
			Counters dbusapi.Counters
		}{st, cs})
	}
	tampered := "no"
	if st.Tampered {
		tampered = "yes: the rule file was tampered with and restored"
	}
	tw := newTable(c.io.Out)
	tw.row("mode", string(st.Mode))
	tw.row("tampered", tampered)
	tw.row("apps", st.Apps)
	tw.row("prompts", st.Prompts)
	tw.row("learned", st.Learned)
	tw.row("agents", st.Agents)
	tw.row("allowed", cs.Allowed)
	tw.row("denied", cs.Denied)
	tw.row("held", cs.Held)
	tw.row("timed out", cs.TimedOut)
	tw.row("tampering", cs.Tampering)
	tw.row("ring drops", cs.RingDrops)
	return tw.flush()
}

func checkMode(c *command) error {
	if len(c.args) != 1 || (c.args[0] != string(dbusapi.Learning) && c.args[0] != string(dbusapi.Enforce)) {
		return usageErr("want mode learning|enforce")
	}
	return nil
}

func setMode(ctx context.Context, c *command) error {
	m := dbusapi.Mode(c.args[0])
	if err := c.client.SetMode(ctx, m); err != nil {
		return err
	}
	return c.done("mode: "+string(m), map[string]string{"mode": string(m)})
}

func checkRehash(c *command) error {
	if c.all == (len(c.args) == 1) || len(c.args) > 1 {
		return usageErr("want rehash PATH or rehash --all")
	}
	return checkPath(c.args...)
}

// checkPath refuses relative paths before anything is sent.
func checkPath(paths ...string) error {
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return usageErr("%q is not an absolute path", p)
		}
	}
	return nil
}

func rehash(ctx context.Context, c *command) error {
	var rs []dbusapi.Rehashed
	if c.all {
		var err error
		if rs, err = c.client.RehashAll(ctx); err != nil {
			return err
		}
	} else {
		r, err := c.client.Rehash(ctx, c.args[0])
		if err != nil {
			return err
		}
		rs = []dbusapi.Rehashed{r}
	}
	if c.json {
		return c.printJSON(nonNil(rs))
	}
	if len(rs) == 0 {
		fmt.Fprintln(c.io.Out, "nothing to rehash")
		return nil
	}
	for _, r := range rs {
		origin := "modified outside the package manager"
		if r.Package != "" {
			origin = "updated by package " + r.Package
		}
		fmt.Fprintf(c.io.Out, "%s: %s -> %s (%s)\n", r.Path, short(r.OldSHA256), short(r.NewSHA256), origin)
	}
	return nil
}

func checkVerdict(c *command) error {
	if len(c.args) != 1 {
		return usageErr("want one PATH")
	}
	if _, err := c.uid(); err != nil {
		return err
	}
	return checkPath(c.args[0])
}

// uid returns the --user argument: a uid, "any", or by default the
// invoking user (any for root).
func (c *command) uid() (uint32, error) {
	switch c.user {
	case "":
		if c.io.UID == 0 {
			return dbusapi.AnyUser, nil
		}
		return uint32(c.io.UID), nil
	case "any":
		return dbusapi.AnyUser, nil
	}
	n, err := strconv.ParseUint(c.user, 10, 32)
	if err != nil || uint32(n) == dbusapi.AnyUser {
		return 0, usageErr("--user %q: want a uid or any", c.user)
	}
	return uint32(n), nil
}

func setVerdict(v dbusapi.Verdict) func(ctx context.Context, c *command) error {
	return func(ctx context.Context, c *command) error {
		uid, _ := c.uid() // checked
		path := c.args[0]
		var err error
		if v == dbusapi.Allow {
			err = c.client.Allow(ctx, path, uid)
		} else {
			err = c.client.Deny(ctx, path, uid)
		}
		if err != nil {
			return err
		}
		return c.done(fmt.Sprintf("%s: %s for %s", path, v, userName(uid)),
			map[string]any{"path": path, "uid": uid, "verdict": v})
	}
}

func forget(ctx context.Context, c *command) error {
	uid, _ := c.uid() // checked
	if err := c.client.Forget(ctx, c.args[0], uid); err != nil {
		return err
	}
	return c.done(fmt.Sprintf("%s: forgotten for %s", c.args[0], userName(uid)),
		map[string]any{"path": c.args[0], "uid": uid})
}

func checkAdopt(c *command) error {
	if c.all == (len(c.args) > 0) {
		return usageErr("want adopt PATH... or adopt --all")
	}
	return checkPath(c.args...)
}

func adopt(ctx context.Context, c *command) error {
	paths := c.args
	if c.all {
		ls, err := c.client.Learned(ctx)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, l := range ls {
			if !seen[l.Path] {
				seen[l.Path] = true
				paths = append(paths, l.Path)
			}
		}
		if len(paths) == 0 {
			return c.done("nothing learned", []string{})
		}
	}
	if err := c.client.AdoptLearned(ctx, paths); err != nil {
		return err
	}
	return c.done(fmt.Sprintf("adopted %d app(s)", len(paths)), paths)
}

func checkAnswer(c *command) error {
	if len(c.args) != 2 {
		return usageErr("want answer ID allow|deny")
	}
	if v := dbusapi.Verdict(c.args[1]); v != dbusapi.Allow && v != dbusapi.Deny {
		return usageErr("verdict %q: want allow or deny", c.args[1])
	}
	switch dbusapi.Scope(c.scope) {
	case dbusapi.Once, dbusapi.UntilQuit, dbusapi.Always, dbusapi.AlwaysAllUsers:
	default:
		return usageErr("--scope %q: want once, until-quit, always or always-all-users", c.scope)
	}
	return nil
}

func answer(ctx context.Context, c *command) error {
	id, v, s := c.args[0], dbusapi.Verdict(c.args[1]), dbusapi.Scope(c.scope)
	if err := c.client.Answer(ctx, id, v, s); err != nil {
		return err
	}
	return c.done(fmt.Sprintf("%s: %s (%s)", id, v, s), map[string]string{"id": id, "verdict": string(v), "scope": string(s)})
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func userName(uid uint32) string {
	if uid == dbusapi.AnyUser {
		return "any user"
	}
	return "uid " + strconv.FormatUint(uint64(uid), 10)
}

// short abbreviates a SHA-256 for tables.
func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	if sum == "" {
		return "-"
	}
	return sum
}
