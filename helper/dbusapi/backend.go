package dbusapi

import "context"

// Backend is the firewall engine behind the Server. The Server has
// validated and authorized every argument before it calls a method.
// Methods may return errors matching ErrNotFound, ErrInvalidArgument or
// ErrTampered; the Server maps them to named D-Bus errors. Implementations
// must be safe for concurrent use: every D-Bus call runs in its own
// goroutine.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	Counters(ctx context.Context) (Counters, error)
	SetMode(ctx context.Context, m Mode) error

	Apps(ctx context.Context) ([]App, error)
	// SetVerdict adds or replaces the rule for path and uid (AnyUser for
	// every user), registering the file's current hash.
	SetVerdict(ctx context.Context, path string, uid uint32, v Verdict) error
	Forget(ctx context.Context, path string, uid uint32) error
	Rehash(ctx context.Context, path string) (Rehashed, error)
	RehashAll(ctx context.Context) ([]Rehashed, error)
	Learned(ctx context.Context) ([]Learned, error)
	AdoptLearned(ctx context.Context, paths []string) error

	Rules(ctx context.Context) ([]Rule, error)
	ExportRules(ctx context.Context) (string, error)
	ImportRules(ctx context.Context, toml string) error

	// Prompts returns every pending prompt; the Server filters by user.
	Prompts(ctx context.Context) ([]Prompt, error)
	Answer(ctx context.Context, a Answer) error

	// Flows returns the flow table; the Server filters by user.
	Flows(ctx context.Context) ([]Flow, error)
}
