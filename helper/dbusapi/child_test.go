package dbusapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/internal/testbus"
	"github.com/godbus/dbus/v5"
)

// The test binary, re-executed as a test user (testbus.StartChild), acts
// as an API client driven by lines on stdin:
//
//	name                        -> ok "<unique bus name>"
//	polkit-agent                -> register a polkit agent that dismisses every dialog
//	interactive                 -> allow interactive authorization from now on
//	call {"method":M,"args":[]} -> call Client method M
//	agent "/path"               -> register a prompt agent at /path
//	unagent "/path"             -> unregister it
//	register-and-exit "/path"   -> send RegisterAgent and exit without waiting
//
// Replies are "ok <json>" or "err <D-Bus error name>"; the agent prints
// "prompt <json>" and "cancel <id>" lines as calls arrive.
const childRole = "api-client"

func TestMain(m *testing.M) {
	if os.Getenv(testbus.ChildEnv) == childRole {
		os.Exit(runClient())
	}
	os.Exit(m.Run())
}

type printer struct {
	mu sync.Mutex
}

func (p *printer) line(kind string, v any) {
	b, _ := json.Marshal(v)
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Printf("%s %s\n", kind, b)
}

func (p *printer) result(v any, err error) {
	if err != nil {
		var re *dbusapi.RemoteError
		if errors.As(err, &re) {
			p.line("err", re.Name)
		} else {
			p.line("err", err.Error())
		}
		return
	}
	p.line("ok", v)
}

type printingAgent struct{ p *printer }

func (a printingAgent) Prompt(pr dbusapi.Prompt) { a.p.line("prompt", pr) }
func (a printingAgent) Cancel(id string)         { a.p.line("cancel", id) }

func runClient() int {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	client := dbusapi.NewClient(conn, false)
	p := &printer{}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		op, arg, _ := strings.Cut(sc.Text(), " ")
		switch op {
		case "name":
			p.result(conn.Names()[0], nil)
		case "polkit-agent":
			p.result(nil, testbus.RegisterPolkitAgent(conn, testbus.Dismiss))
		case "interactive":
			client = dbusapi.NewClient(conn, true)
			p.result(nil, nil)
		case "agent", "unagent", "register-and-exit":
			var path dbus.ObjectPath
			if err := json.Unmarshal([]byte(arg), &path); err != nil {
				p.result(nil, err)
				continue
			}
			switch op {
			case "agent":
				p.result(nil, client.RegisterAgent(ctx, path, printingAgent{p}))
			case "unagent":
				p.result(nil, client.UnregisterAgent(ctx, path))
			default:
				// Go returns once the call is written; die at once (os.Exit
				// under the race detector lingers for a second).
				conn.Object(dbusapi.BusName, dbusapi.ObjectPath).Go(dbusapi.PromptsInterface+".RegisterAgent", 0, nil, path)
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		case "call":
			var c struct {
				Method string
				Args   []json.RawMessage
			}
			if err := json.Unmarshal([]byte(arg), &c); err != nil {
				p.result(nil, err)
				continue
			}
			p.result(callClient(ctx, client, c.Method, c.Args))
		default:
			p.result(nil, fmt.Errorf("unknown op %q", op))
		}
	}
	return 0
}

// callClient calls the Client method named by method with JSON args.
func callClient(ctx context.Context, c *dbusapi.Client, method string, raw []json.RawMessage) (any, error) {
	var s [3]string
	var u uint32
	var paths []string
	for i, r := range raw {
		if i < 3 && json.Unmarshal(r, &s[i]) != nil {
			if err := json.Unmarshal(r, &u); err != nil {
				if err := json.Unmarshal(r, &paths); err != nil {
					return nil, err
				}
			}
		}
	}
	switch method {
	case "GetStatus":
		return c.Status(ctx)
	case "GetCounters":
		return c.Counters(ctx)
	case "Mode":
		return c.Mode(ctx)
	case "SetMode":
		return nil, c.SetMode(ctx, dbusapi.Mode(s[0]))
	case "ListApps":
		return c.Apps(ctx)
	case "Allow":
		return nil, c.Allow(ctx, s[0], u)
	case "Deny":
		return nil, c.Deny(ctx, s[0], u)
	case "Forget":
		return nil, c.Forget(ctx, s[0], u)
	case "Rehash":
		return c.Rehash(ctx, s[0])
	case "RehashAll":
		return c.RehashAll(ctx)
	case "ListLearned":
		return c.Learned(ctx)
	case "AdoptLearned":
		return nil, c.AdoptLearned(ctx, paths)
	case "Show":
		return c.Rules(ctx)
	case "Export":
		return c.ExportRules(ctx)
	case "Import":
		return nil, c.ImportRules(ctx, s[0])
	case "ListPrompts":
		return c.Prompts(ctx)
	case "Answer":
		return nil, c.Answer(ctx, s[0], dbusapi.Verdict(s[1]), dbusapi.Scope(s[2]))
	case "ListFlows":
		return c.Flows(ctx)
	}
	return nil, fmt.Errorf("unknown method %q", method)
}
