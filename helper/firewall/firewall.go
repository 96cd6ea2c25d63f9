// Package firewall is Aegis's decision engine: it joins the kernel
// datapath, the trust registry and the rule store, decides held
// connections or asks their owner, and serves the D-Bus API's Backend.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aegisfw/aegis/bpf"
	"github.com/aegisfw/aegis/helper/apps"
	"github.com/aegisfw/aegis/helper/dbusapi"
	"github.com/aegisfw/aegis/helper/proc"
	"github.com/aegisfw/aegis/helper/rules"
	"github.com/aegisfw/aegis/helper/rulestore"
)

// Prompter delivers prompts to the agents of the owning user; it is
// satisfied by *dbusapi.Server.
type Prompter interface {
	// PromptAgents returns how many agents accepted p; zero applies the
	// no-agent policy.
	PromptAgents(ctx context.Context, p dbusapi.Prompt) (int, error)
	ResolvePrompt(ctx context.Context, id string, v dbusapi.Verdict) error
}

// Signals announces changes; it is satisfied by *dbusapi.Server.
type Signals interface {
	ModeChanged(m dbusapi.Mode) error
	AppsChanged() error
	HashChanged(path string, state dbusapi.HashState) error
	RulesChanged() error
	Tampered(path, rejectedCopy string) error
}

// Config configures an Engine.
type Config struct {
	// Datapath is the loaded and attached datapath. Required.
	Datapath *bpf.Datapath
	// Registry is the trust registry. New replaces its apps with the
	// rules in force, so it may be built with none. Required.
	Registry *apps.Registry
	// Store is the rule store, not loaded yet: New calls Load, and a
	// rule file refused as tampered is reported through Signals once Run
	// starts while the last good rules are enforced. Required.
	Store *rulestore.Store
	// Proc reads process facts; the zero value reads /proc.
	Proc proc.FS
	// Logger receives the engine's log lines. Required.
	Logger *slog.Logger
	// PromptTimeout overrides the rule file's prompt timeout when nonzero.
	PromptTimeout time.Duration
	// MaxFlows bounds the flow table; default 4096.
	MaxFlows int
	// MaxLearned bounds the apps recorded in learning mode; default 4096.
	MaxLearned int
	// Heartbeat is the interval of the datapath heartbeat; default 1 s.
	Heartbeat time.Duration
	// HeartbeatTimeout is how long the kernel waits for a beat before it
	// applies the fail mode; default that of bpf.DefaultConfig.
	HeartbeatTimeout time.Duration
}

// Defaults.
const (
	DefaultMaxFlows   = 4096
	DefaultMaxLearned = 4096
	DefaultHeartbeat  = time.Second
	// maxDNS bounds the hostname cache.
	maxDNS = 8192
)

// Engine decides connections. It is safe for concurrent use and
// implements dbusapi.Backend.
type Engine struct {
	dp    *bpf.Datapath
	reg   *apps.Registry
	store *rulestore.Store
	proc  proc.FS
	log   *slog.Logger
	cfg   Config

	// loadErr is the TamperError of the initial Load, reported by Run.
	loadErr *rulestore.TamperError

	// wg counts the goroutines Run waits for when it ends.
	wg sync.WaitGroup
	// wmu serialises read-modify-write cycles of the rule file.
	wmu sync.Mutex

	// beforeVerify, when set by tests, runs before a held request's
	// process is verified.
	beforeVerify func(bpf.Event)
	// watching is closed when Run has pushed the policy and starts
	// watching the datapath.
	watching chan struct{}

	mu sync.Mutex
	// The mutex protects the following fields.
	ctx       context.Context // Run's, nil outside Run; bounds prompt deliveries
	prompter  Prompter
	signals   Signals
	settings  rules.Settings
	tampered  bool
	kernel    kernelState
	requests  map[reqKey]*prompt // held requests being decided; nil value: being verified
	decided   decidedSet
	prompts   map[string]*prompt
	byTarget  map[promptKey]*prompt
	untilQuit map[procKey]*quitRule
	learned   map[learnKey]*learnedApp
	flows     flowTable
	dns       dnsCache
	counts    counts
	seq       uint64
}

var _ dbusapi.Backend = (*Engine)(nil)

// New loads the rule store, registers its apps and returns an engine. It
// does not touch the kernel until Run.
func New(cfg Config) (*Engine, error) {
	if cfg.Datapath == nil || cfg.Registry == nil || cfg.Store == nil || cfg.Logger == nil {
		return nil, errors.New("new firewall: Datapath, Registry, Store and Logger are required")
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxLearned <= 0 {
		cfg.MaxLearned = DefaultMaxLearned
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = bpf.DefaultConfig().HeartbeatTimeout
	}
	e := &Engine{
		dp:        cfg.Datapath,
		reg:       cfg.Registry,
		store:     cfg.Store,
		proc:      cfg.Proc,
		log:       cfg.Logger.With("component", "firewall"),
		cfg:       cfg,
		kernel:    newKernelState(),
		requests:  map[reqKey]*prompt{},
		prompts:   map[string]*prompt{},
		byTarget:  map[promptKey]*prompt{},
		untilQuit: map[procKey]*quitRule{},
		learned:   map[learnKey]*learnedApp{},
		flows:     newFlowTable(cfg.MaxFlows),
		dns:       newDNSCache(maxDNS),
		watching:  make(chan struct{}),
	}
	snap, err := cfg.Store.Load()
	var te *rulestore.TamperError
	switch {
	case errors.As(err, &te):
		e.loadErr = te
		e.tampered = true
		e.log.Warn("rule file refused; enforcing the last good rules", "path", te.Event.Path,
			"changes", te.Event.Changes.String(), "rejected", te.Event.Rejected)
	case err != nil:
		return nil, fmt.Errorf("new firewall: %w", err)
	}
	e.settings = snap.Effective.Settings
	if err := cfg.Registry.Replace(snap.Effective.Apps); err != nil {
		return nil, fmt.Errorf("new firewall: register apps: %w", err)
	}
	return e, nil
}

// SetPrompter sets where prompts go; nil means no agent is registered.
// Call it before Run.
func (e *Engine) SetPrompter(p Prompter) {
	e.mu.Lock()
	e.prompter = p
	e.mu.Unlock()
}

// SetSignals sets where change notifications go; nil discards them.
func (e *Engine) SetSignals(s Signals) {
	e.mu.Lock()
	e.signals = s
	e.mu.Unlock()
}

// Run pushes the policy to the kernel and decides connections until ctx
// ends: it watches datapath events, the registry's hash changes and the
// rule store's tamper events. Held requests left when it returns stay
// held in the kernel for the next Run (or the fail mode) to decide.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.mu.Lock()
	if e.ctx != nil {
		e.mu.Unlock()
		return errors.New("run firewall: already running")
	}
	e.ctx = ctx
	settings := e.settings
	e.mu.Unlock()
	defer e.stop()

	if err := e.dp.SetConfig(e.kernelConfig(settings)); err != nil {
		return fmt.Errorf("run firewall: %w", err)
	}
	if e.loadErr != nil {
		e.counts.tampering.Add(1)
		e.signal(func(s Signals) error { return s.Tampered(e.loadErr.Event.Path, e.loadErr.Event.Rejected) })
	}
	if err := e.adoptKernelPolicy(); err != nil {
		return fmt.Errorf("run firewall: %w", err)
	}
	if err := e.syncKernel(); err != nil {
		return fmt.Errorf("run firewall: %w", err)
	}
	w, err := e.store.Watch(e.onTamper)
	if err != nil {
		return fmt.Errorf("run firewall: %w", err)
	}
	defer w.Close()

	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.watchRegistry(ctx)
	}()

	e.log.Info("firewall running", "mode", settings.Mode, "apps", len(e.reg.Apps()))
	select {
	case <-e.watching:
	default:
		close(e.watching)
	}
	err = e.dp.Watch(ctx, e.cfg.Heartbeat, bpf.Handlers{Connection: e.onConnection, DNS: e.onDNS})
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("run firewall: %w", err)
}

// stop ends what Run started: prompt timers, process watchers and
// workers. Pending prompts are forgotten; their requests stay held in the
// kernel and are reported again by the next Run.
func (e *Engine) stop() {
	e.mu.Lock()
	for _, p := range e.prompts {
		if p.timer != nil {
			p.timer.Stop()
		}
	}
	for _, q := range e.untilQuit {
		q.stop()
	}
	e.withdrawHostsLocked()
	e.mu.Unlock()
	e.wg.Wait()
	e.mu.Lock()
	e.ctx = nil
	e.prompts = map[string]*prompt{}
	e.byTarget = map[promptKey]*prompt{}
	e.requests = map[reqKey]*prompt{}
	e.mu.Unlock()
}

// kernelConfig is the datapath configuration for settings.
func (e *Engine) kernelConfig(s rules.Settings) bpf.Config {
	c := bpf.DefaultConfig()
	c.HeartbeatTimeout = e.cfg.HeartbeatTimeout
	c.Mode = bpf.ModeEnforce
	if s.Mode == rules.Learning {
		c.Mode = bpf.ModeLearning
	}
	switch s.FailMode {
	case rules.FailHold:
		c.FailMode = bpf.FailHold
	case rules.FailAllow:
		c.FailMode = bpf.FailAllow
	default:
		c.FailMode = bpf.FailDeny
	}
	c.CaptureDNS = true
	return c
}

// promptTimeout is how long a prompt waits for an answer.
func (e *Engine) promptTimeoutLocked() time.Duration {
	if e.cfg.PromptTimeout > 0 {
		return e.cfg.PromptTimeout
	}
	if e.settings.PromptTimeout > 0 {
		return e.settings.PromptTimeout
	}
	return rules.DefaultSettings().PromptTimeout
}

// signal calls fn with the Signals, if any, and logs its error.
func (e *Engine) signal(fn func(Signals) error) {
	e.mu.Lock()
	s := e.signals
	e.mu.Unlock()
	if s == nil {
		return
	}
	if err := fn(s); err != nil {
		e.log.Warn("emit signal", "err", err)
	}
}

// onTamper handles a tamper event of the rule store: the store has
// restored the file and kept enforcing the last good rules.
func (e *Engine) onTamper(ev rulestore.Event) {
	e.counts.tampering.Add(1)
	e.mu.Lock()
	e.tampered = true
	e.mu.Unlock()
	e.log.Warn("rule file tampered with; restored", "path", ev.Path, "changes", ev.Changes.String(), "rejected", ev.Rejected)
	e.signal(func(s Signals) error { return s.Tampered(ev.Path, ev.Rejected) })
}

// watchRegistry follows the registry's hash changes until ctx ends.
func (e *Engine) watchRegistry(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case hc, ok := <-e.reg.Events():
			if !ok {
				return
			}
			e.onHashChanged(hc)
		}
	}
}

// onHashChanged withdraws the kernel's trust in a file that changed and
// grants it again to a file that became valid (a rehash).
func (e *Engine) onHashChanged(hc apps.HashChanged) {
	e.log.Info("hash state changed", "exe", hc.Path, "old", hc.Old.String(), "state", hc.New.String(), "sha256", hc.SHA256)
	if err := e.syncKernel(); err != nil {
		e.log.Error("update kernel policy", "exe", hc.Path, "err", err)
	}
	e.signal(func(s Signals) error { return s.HashChanged(hc.Path, hashState(hc.New)) })
}

func hashState(s apps.State) dbusapi.HashState {
	switch s {
	case apps.Valid:
		return dbusapi.HashValid
	case apps.Missing:
		return dbusapi.HashMissing
	}
	return dbusapi.HashChanged
}
