package dbusapi_test

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/aegisfw/aegis/helper/dbusapi"
)

// memBackend is an in-memory dbusapi.Backend for the API tests; the
// firewall engine is the real implementation. It records every change so
// tests can check that a refused call changed nothing.
type memBackend struct {
	mu    sync.Mutex
	state memState
}

// memState is everything a call can change, comparable with cmp.
type memState struct {
	Mode     dbusapi.Mode
	Apps     map[string]dbusapi.Verdict // "path uid" -> verdict
	Rehashed []string
	Adopted  []string
	Imported []string
	Exported int
	Answers  []dbusapi.Answer
	Prompts  []dbusapi.Prompt
	Flows    []dbusapi.Flow
	Learned  []dbusapi.Learned
}

func newMemBackend() *memBackend {
	return &memBackend{state: memState{
		Mode: dbusapi.Enforce,
		Apps: map[string]dbusapi.Verdict{fmt.Sprintf("/usr/bin/curl %d", dbusapi.AnyUser): dbusapi.Allow},
	}}
}

// snapshot returns a deep copy of the state.
func (b *memBackend) snapshot() memState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state
	s.Apps = map[string]dbusapi.Verdict{}
	for k, v := range b.state.Apps {
		s.Apps[k] = v
	}
	s.Rehashed = slices.Clone(s.Rehashed)
	s.Adopted = slices.Clone(s.Adopted)
	s.Imported = slices.Clone(s.Imported)
	s.Answers = slices.Clone(s.Answers)
	s.Prompts = slices.Clone(s.Prompts)
	s.Flows = slices.Clone(s.Flows)
	s.Learned = slices.Clone(s.Learned)
	return s
}

func (b *memBackend) Status(ctx context.Context) (dbusapi.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return dbusapi.Status{Mode: b.state.Mode, Apps: uint32(len(b.state.Apps)), Prompts: uint32(len(b.state.Prompts))}, nil
}

func (b *memBackend) Counters(ctx context.Context) (dbusapi.Counters, error) {
	return dbusapi.Counters{Allowed: 3, Denied: 2}, nil
}

func (b *memBackend) SetMode(ctx context.Context, m dbusapi.Mode) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Mode = m
	return nil
}

func (b *memBackend) Apps(ctx context.Context) ([]dbusapi.App, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []dbusapi.App
	for k, v := range b.state.Apps {
		var a dbusapi.App
		fmt.Sscanf(k, "%s %d", &a.Path, &a.UID)
		a.Verdict, a.HashState = v, dbusapi.HashValid
		out = append(out, a)
	}
	return out, nil
}

func (b *memBackend) SetVerdict(ctx context.Context, path string, uid uint32, v dbusapi.Verdict) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Apps[fmt.Sprintf("%s %d", path, uid)] = v
	return nil
}

func (b *memBackend) Forget(ctx context.Context, path string, uid uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := fmt.Sprintf("%s %d", path, uid)
	if _, ok := b.state.Apps[k]; !ok {
		return fmt.Errorf("forget %s: %w", k, dbusapi.ErrNotFound)
	}
	delete(b.state.Apps, k)
	return nil
}

func (b *memBackend) Rehash(ctx context.Context, path string) (dbusapi.Rehashed, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Rehashed = append(b.state.Rehashed, path)
	return dbusapi.Rehashed{Path: path, NewSHA256: "00"}, nil
}

func (b *memBackend) RehashAll(ctx context.Context) ([]dbusapi.Rehashed, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Rehashed = append(b.state.Rehashed, "*")
	return []dbusapi.Rehashed{{Path: "/usr/bin/curl"}}, nil
}

func (b *memBackend) Learned(ctx context.Context) ([]dbusapi.Learned, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.state.Learned), nil
}

func (b *memBackend) AdoptLearned(ctx context.Context, paths []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Adopted = append(b.state.Adopted, paths...)
	return nil
}

func (b *memBackend) Rules(ctx context.Context) ([]dbusapi.Rule, error) {
	apps, _ := b.Apps(ctx)
	var out []dbusapi.Rule
	for _, a := range apps {
		out = append(out, dbusapi.Rule{Path: a.Path, UID: a.UID, Verdict: a.Verdict})
	}
	return out, nil
}

func (b *memBackend) ExportRules(ctx context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Exported++
	return "version = 1\n", nil
}

func (b *memBackend) ImportRules(ctx context.Context, toml string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Imported = append(b.state.Imported, toml)
	return nil
}

func (b *memBackend) Prompts(ctx context.Context) ([]dbusapi.Prompt, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.state.Prompts), nil
}

func (b *memBackend) Answer(ctx context.Context, a dbusapi.Answer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state.Answers = append(b.state.Answers, a)
	return nil
}

func (b *memBackend) Flows(ctx context.Context) ([]dbusapi.Flow, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.state.Flows), nil
}
