package firewall

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/rules"
)

func packDNS(t *testing.T, m dnsmessage.Message) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDNS(t *testing.T) {
	name := dnsmessage.MustNewName("WWW.Example.org.")
	target := dnsmessage.MustNewName("cdn.example.net.")
	q := []dnsmessage.Question{{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}
	hdr := func(n dnsmessage.Name, ty dnsmessage.Type, ttl uint32) dnsmessage.ResourceHeader {
		return dnsmessage.ResourceHeader{Name: n, Type: ty, Class: dnsmessage.ClassINET, TTL: ttl}
	}
	answer := dnsmessage.Message{
		Header:    dnsmessage.Header{Response: true},
		Questions: q,
		Answers: []dnsmessage.Resource{
			{Header: hdr(name, dnsmessage.TypeCNAME, 300), Body: &dnsmessage.CNAMEResource{CNAME: target}},
			{Header: hdr(target, dnsmessage.TypeA, 30), Body: &dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}}},
			{Header: hdr(target, dnsmessage.TypeAAAA, 60), Body: &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8::1").As16()}},
		},
	}
	want := []dnsRecord{
		{"www.example.org", netip.MustParseAddr("192.0.2.1"), 30 * time.Second},
		{"www.example.org", netip.MustParseAddr("2001:db8::1"), time.Minute},
	}
	udp := packDNS(t, answer)
	tcp := append([]byte{byte(len(udp) >> 8), byte(len(udp))}, udp...)
	nx := answer
	nx.Header.RCode = dnsmessage.RCodeNameError
	query := answer
	query.Header.Response = false
	tests := []struct {
		name    string
		payload []byte
		proto   uint8
		want    []dnsRecord
		wantErr bool
	}{
		{"udp answer through a cname", udp, bpf.ProtoUDP, want, false},
		{"tcp answer with length prefix", tcp, bpf.ProtoTCP, want, false},
		{"name error has no addresses", packDNS(t, nx), bpf.ProtoUDP, nil, false},
		{"a query is no answer", packDNS(t, query), bpf.ProtoUDP, nil, false},
		{"truncated message", udp[:len(udp)-3], bpf.ProtoUDP, want[:1], true},
		{"garbage", []byte{1, 2, 3}, bpf.ProtoUDP, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDNS(tt.payload, tt.proto)
			if (err != nil) != tt.wantErr {
				t.Errorf("err %v, want error %v", err, tt.wantErr)
			}
			if d := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.AllowUnexported(dnsRecord{})); d != "" {
				t.Errorf("records (-want +got):\n%s", d)
			}
		})
	}
}

func TestDNSCacheBoundsAndExpiry(t *testing.T) {
	c := newDNSCache(2)
	now := time.Unix(1000, 0)
	a := func(s string) dnsKey { return dnsKey{uid: 1000, addr: netip.MustParseAddr(s)} }
	c.add(a("192.0.2.1"), "one", 0, now) // zero TTL lasts minTTL
	c.add(a("192.0.2.2"), "two", 2*time.Hour, now)
	if got := c.lookup(a("192.0.2.1"), now.Add(minTTL/2)); got != "one" {
		t.Errorf("within min TTL: %q", got)
	}
	if got := c.lookup(dnsKey{uid: 1001, addr: netip.MustParseAddr("192.0.2.1")}, now); got != "" {
		t.Errorf("another user's lookup named %q", got)
	}
	if got := c.lookup(a("192.0.2.2"), now.Add(maxTTL+time.Second)); got != "" {
		t.Errorf("past max TTL: %q", got)
	}
	c.add(a("192.0.2.3"), "three", time.Minute, now.Add(time.Minute))
	c.add(a("192.0.2.4"), "four", time.Minute, now.Add(time.Minute))
	if len(c.m) > 2 {
		t.Errorf("cache holds %d entries, bound 2", len(c.m))
	}
	if got := c.lookup(a("192.0.2.4"), now.Add(time.Minute)); got != "four" {
		t.Errorf("newest entry: %q", got)
	}
}

func TestFlowTableKeepsNewest(t *testing.T) {
	ft := newFlowTable(3)
	for i := 1; i <= 5; i++ {
		ft.add(dbusapi.Flow{Cookie: uint64(i)})
	}
	var got []uint64
	for _, f := range ft.list() {
		got = append(got, f.Cookie)
	}
	if d := cmp.Diff([]uint64{3, 4, 5}, got); d != "" {
		t.Errorf("flows (-want +got):\n%s", d)
	}
}

func TestDestVerdictMostSpecificWins(t *testing.T) {
	app := rules.App{Verdict: rules.Deny, Dests: []rules.DestRule{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Verdict: rules.Allow},
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Verdict: rules.Deny},
		{Prefix: netip.MustParsePrefix("10.1.2.3/32"), Port: 443, Proto: rules.TCP, Verdict: rules.Allow},
		{Host: "example.org", Verdict: rules.Allow},
	}}
	tests := []struct {
		dst   string
		proto uint8
		host  string
		want  rules.Verdict
	}{
		{"10.9.9.9:80", bpf.ProtoTCP, "", rules.Allow},
		{"10.1.9.9:80", bpf.ProtoTCP, "", rules.Deny},
		{"10.1.2.3:443", bpf.ProtoTCP, "", rules.Allow},
		{"10.1.2.3:443", bpf.ProtoUDP, "", rules.Deny},
		{"192.0.2.1:443", bpf.ProtoTCP, "", rules.Deny},
		{"192.0.2.1:443", bpf.ProtoTCP, "Example.org.", rules.Allow},
		{"[::ffff:10.9.9.9]:80", bpf.ProtoTCP, "", rules.Allow},
	}
	for _, tt := range tests {
		if got := destVerdict(app, netip.MustParseAddrPort(tt.dst), tt.proto, tt.host); got != tt.want {
			t.Errorf("%s/%d host %q: %v, want %v", tt.dst, tt.proto, tt.host, got, tt.want)
		}
	}
}

// TestBadInputRefused checks that every Backend method refuses what it
// cannot apply with the named error and leaves the rule file untouched.
func TestBadInputRefused(t *testing.T) {
	f := newFixture(t, options{})
	before := mustRead(t, f.rulesFile)
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"answer unknown prompt", func() error {
			return f.e.Answer(ctx, dbusapi.Answer{ID: "nope", Verdict: dbusapi.Allow, Scope: dbusapi.Once})
		}, dbusapi.ErrNotFound},
		{"answer with unknown verdict", func() error {
			return f.e.Answer(ctx, dbusapi.Answer{ID: "nope", Verdict: "maybe", Scope: dbusapi.Once})
		}, dbusapi.ErrInvalidArgument},
		{"allow a missing file", func() error {
			return f.e.SetVerdict(ctx, "/nonexistent/aegis-test", 0, dbusapi.Allow)
		}, dbusapi.ErrNotFound},
		{"unknown verdict", func() error { return f.e.SetVerdict(ctx, f.self, 0, "maybe") }, dbusapi.ErrInvalidArgument},
		{"relative path", func() error { return f.e.SetVerdict(ctx, "rel/path", 0, dbusapi.Deny) }, dbusapi.ErrInvalidArgument},
		{"forget unknown rule", func() error { return f.e.Forget(ctx, "/usr/bin/none", 0) }, dbusapi.ErrNotFound},
		{"rehash unknown path", func() error { _, err := f.e.Rehash(ctx, "/usr/bin/none"); return err }, dbusapi.ErrNotFound},
		{"adopt unlearned path", func() error { return f.e.AdoptLearned(ctx, []string{"/usr/bin/none"}) }, dbusapi.ErrNotFound},
		{"import malformed rules", func() error { return f.e.ImportRules(ctx, "version = 1\n[[app]]\npath = 3\n") }, dbusapi.ErrInvalidArgument},
		{"import newer schema", func() error { return f.e.ImportRules(ctx, "version = 99\n") }, dbusapi.ErrInvalidArgument},
		{"unknown mode", func() error { return f.e.SetMode(ctx, "permissive") }, dbusapi.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
	if after := mustRead(t, f.rulesFile); string(after) != string(before) {
		t.Errorf("rule file changed by refused calls:\n%s", after)
	}
}

func TestRuleEditsReachKernel(t *testing.T) {
	f := newFixture(t, options{})
	ctx := context.Background()
	if err := f.e.SetVerdict(ctx, f.self, rules.AnyUser, dbusapi.Deny); err != nil {
		t.Fatal(err)
	}
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "EPERM" {
		t.Errorf("denied app: err %q, want EPERM", r.Err)
	}
	exported, err := f.e.ExportRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.e.Forget(ctx, f.self, rules.AnyUser); err != nil {
		t.Fatal(err)
	}
	if err := f.e.ImportRules(ctx, exported); err != nil {
		t.Fatal(err)
	}
	rs, err := f.e.Rules(ctx)
	if err != nil || len(rs) != 1 || rs[0].Verdict != dbusapi.Deny {
		t.Fatalf("rules after import: %+v %v", rs, err)
	}
	if err := f.e.SetVerdict(ctx, f.self, rules.AnyUser, dbusapi.Allow); err != nil {
		t.Fatal(err)
	}
	if r := f.cg.Run(t, noOpts, "connect", f.tcp.String(), "5000"); r.Err != "" {
		t.Errorf("allowed app: err %q", r.Err)
	}
	st, _ := f.e.Status(ctx)
	if st.Apps != 1 || st.Mode != dbusapi.Enforce || st.Tampered {
		t.Errorf("status %+v", st)
	}
}

func TestTamperedRuleFileSignalled(t *testing.T) {
	f := newFixture(t, options{})
	sig := &signals{tampered: make(chan string, 4)}
	f.e.SetSignals(sig)
	if err := os.WriteFile(f.rulesFile, []byte("version = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-sig.tampered:
		if p != f.rulesFile {
			t.Errorf("tampered path %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Tampered signal")
	}
	st, _ := f.e.Status(context.Background())
	cs, _ := f.e.Counters(context.Background())
	if !st.Tampered || cs.Tampering == 0 {
		t.Errorf("status %+v counters %+v: want tampering recorded", st, cs)
	}
}

// signals records Tampered signals, counts AppsChanged and ignores the
// others.
type signals struct {
	tampered chan string
	apps     atomic.Int32
}

func (s *signals) ModeChanged(dbusapi.Mode) error              { return nil }
func (s *signals) AppsChanged() error                          { s.apps.Add(1); return nil }
func (s *signals) HashChanged(string, dbusapi.HashState) error { return nil }
func (s *signals) RulesChanged() error                         { return nil }
func (s *signals) Tampered(path, _ string) error               { s.tampered <- path; return nil }

func TestRevokedTrustAbortsOpenConnections(t *testing.T) {
	tests := []struct {
		name   string
		revoke func(f *fixture) error
	}{
		{"deny", func(f *fixture) error {
			return f.e.SetVerdict(context.Background(), f.self, rules.AnyUser, dbusapi.Deny)
		}},
		{"forget", func(f *fixture) error { return f.e.Forget(context.Background(), f.self, rules.AnyUser) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, options{})
			if err := f.e.SetVerdict(context.Background(), f.self, rules.AnyUser, dbusapi.Allow); err != nil {
				t.Fatal(err)
			}
			c := f.cg.Start(t, noOpts, "established", f.tcp.String())
			if r := c.Next(t); r.Err != "" {
				t.Fatalf("trusted connect: %s", r.Err)
			}
			if err := tt.revoke(f); err != nil {
				t.Fatal(err)
			}
			if r := c.Next(t); r.Err != "ECONNABORTED" {
				t.Errorf("open connection after %s ended with %q, want ECONNABORTED", tt.name, r.Err)
			}
		})
	}
}
