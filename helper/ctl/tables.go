package ctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aegisfw/aegis/helper/dbusapi"
)

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table {
	return &table{tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
}

func (t *table) row(cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		fmt.Fprint(t.tw, c)
	}
	fmt.Fprint(t.tw, "\n")
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// when renders Unix seconds; 0 is unknown.
func when(sec int64) string {
	if sec == 0 {
		return "-"
	}
	return time.Unix(sec, 0).Local().Format("2006-01-02 15:04:05")
}

func user(uid uint32) string {
	if uid == dbusapi.AnyUser {
		return "any"
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// dest renders a destination as host (addr:port/proto).
func dest(host, addr string, port uint16, proto string) string {
	ap := addr
	if a, err := netip.ParseAddr(addr); err == nil {
		ap = netip.AddrPortFrom(a, port).String()
	}
	s := ap + "/" + proto
	if host != "" {
		s = host + " (" + s + ")"
	}
	return s
}

func listApps(ctx context.Context, c *command) error {
	apps, err := c.client.Apps(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(nonNil(apps))
	}
	t := newTable(c.io.Out)
	t.row("PATH", "USER", "VERDICT", "HASH", "SHA256", "PACKAGE", "LAST SEEN")
	for _, a := range apps {
		t.row(a.Path, user(a.UID), a.Verdict, a.HashState, short(a.SHA256), orDash(a.Package), when(a.LastSeen))
	}
	return t.flush()
}

func listLearned(ctx context.Context, c *command) error {
	ls, err := c.client.Learned(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(nonNil(ls))
	}
	t := newTable(c.io.Out)
	t.row("PATH", "USER", "LINEAGE", "DESTINATIONS", "FIRST SEEN")
	for _, l := range ls {
		t.row(l.Path, user(l.UID), orDash(strings.Join(l.Lineage, " → ")), orDash(strings.Join(l.Dests, ", ")), when(l.FirstSeen))
	}
	return t.flush()
}

func listPrompts(ctx context.Context, c *command) error {
	ps, err := c.client.Prompts(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(nonNil(ps))
	}
	t := newTable(c.io.Out)
	t.row("ID", "USER", "PID", "EXE", "DESTINATION", "TIME", "NOTE")
	for _, p := range ps {
		note := p.Note
		if p.Changed && note == "" {
			note = "binary changed"
		}
		t.row(p.ID, user(p.UID), p.PID, p.Exe, dest(p.Host, p.Addr, p.Port, p.Proto), when(p.Time), orDash(note))
	}
	return t.flush()
}

func listFlows(ctx context.Context, c *command) error {
	fs, err := c.client.Flows(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(nonNil(fs))
	}
	t := newTable(c.io.Out)
	// The datapath does not count bytes yet: the table leaves them out
	// rather than print zeros.
	t.row("PID", "USER", "EXE", "DESTINATION", "VERDICT", "REASON", "START")
	for _, f := range fs {
		t.row(f.PID, user(f.UID), f.Exe, dest(f.Host, f.Addr, f.Port, f.Proto), f.Verdict, f.Reason, when(f.Start))
	}
	return t.flush()
}

func showRules(ctx context.Context, c *command) error {
	rs, err := c.client.Rules(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(nonNil(rs))
	}
	t := newTable(c.io.Out)
	t.row("PATH", "USER", "VERDICT", "SHA256", "PARENT", "DESTINATIONS")
	for _, r := range rs {
		var ds []string
		for _, d := range r.Dests {
			target := d.Host
			if target == "" {
				target = orDash(d.Prefix)
			}
			port := "any"
			if d.Port != 0 {
				port = strconv.Itoa(int(d.Port))
			}
			proto := d.Proto
			if proto == "" {
				proto = "any"
			}
			ds = append(ds, fmt.Sprintf("%s %s:%s/%s", d.Verdict, target, port, proto))
		}
		t.row(r.Path, user(r.UID), r.Verdict, short(r.SHA256), orDash(r.Parent), orDash(strings.Join(ds, "; ")))
	}
	return t.flush()
}

// promptText renders a prompt for a terminal agent.
func promptText(p dbusapi.Prompt) string {
	var b strings.Builder
	fmt.Fprintf(&b, "prompt %s: %s (pid %d, user %s) wants to connect to %s\n",
		p.ID, p.Exe, p.PID, user(p.UID), dest(p.Host, p.Addr, p.Port, p.Proto))
	if len(p.Lineage) > 0 {
		fmt.Fprintf(&b, "  lineage: %s\n", strings.Join(p.Lineage, " → "))
	}
	if p.Changed || p.Note != "" {
		fmt.Fprintf(&b, "  note: the binary changed. %s\n", p.Note)
	}
	fmt.Fprintf(&b, "  answer: aegisctl answer %s allow|deny [--scope once|until-quit|always]\n", p.ID)
	return b.String()
}
