package apps

import (
	"context"
	"fmt"
	"io/fs"
	"slices"

	"github.com/aegisfw/aegis/helper/rules"
)

// RehashResult is the outcome of re-registering one path's hash.
type RehashResult struct {
	Path string
	// Old is the digest the apps at Path were registered with (the lowest
	// UID's, should they differ).
	Old string
	// New is the digest of the file now at Path, now registered for every
	// app at Path.
	New string
	// Key is the file's identity.
	Key Key
	// Origin is dpkg's opinion of the new content. Rehash accepts the hash
	// whatever it says; callers warn on anything but PackageMatch.
	Origin Origin
	// Apps are the apps at Path with SHA256 set to New and, when a package
	// owns the file, Package set to it: what the caller writes to the rule
	// file.
	Apps []rules.App
	// Err is set by RehashAll for a path that could not be rehashed; the
	// registry is unchanged for it.
	Err error
}

// Rehash re-registers the current hash of the file at path for every app
// registered there, after asking dpkg whether the new content is the
// packaged one (see Origin). It persists nothing: the caller writes
// result.Apps to the rule file. The path's state becomes Valid and a
// HashChanged is emitted if the state changed.
//
// It returns an error wrapping ErrNotRegistered for an unknown path,
// fs.ErrNotExist when the file is gone (the state becomes Missing), or
// ErrChangedWhileHashing when the file kept changing while read.
func (r *Registry) Rehash(path string) (RehashResult, error) {
	if !r.registered(path) {
		return RehashResult{}, fmt.Errorf("rehash %q: %w", path, ErrNotRegistered)
	}
	recs, err := r.dpkg.lookup([]string{path})
	if err != nil {
		return RehashResult{}, fmt.Errorf("rehash %q: %w", path, err)
	}
	res := r.rehash(path, recs[path])
	return res, res.Err
}

// RehashAll rehashes every registered path, runtime.NumCPU() (Config.
// Workers) files at a time, and returns one result per path sorted by
// path, with per-path failures in RehashResult.Err. dpkg's file lists are
// read once for all paths. Memory stays bounded: each worker reads its
// file through one reused 1 MiB buffer and only the results are kept.
// It returns ctx's error if ctx ends first, with the results finished so
// far (the others carry ctx's error).
func (r *Registry) RehashAll(ctx context.Context) ([]RehashResult, error) {
	r.mu.RLock()
	paths := make([]string, 0, len(r.entries))
	for p := range r.entries {
		paths = append(paths, p)
	}
	r.mu.RUnlock()
	slices.Sort(paths)

	recs, err := r.dpkg.lookup(paths)
	if err != nil {
		return nil, fmt.Errorf("rehash all: %w", err)
	}
	out := make([]RehashResult, len(paths))
	r.parallel(len(paths), func(i int) {
		if err := ctx.Err(); err != nil {
			out[i] = RehashResult{Path: paths[i], Err: fmt.Errorf("rehash %q: %w", paths[i], err)}
			return
		}
		out[i] = r.rehash(paths[i], recs[paths[i]])
	})
	if err := ctx.Err(); err != nil {
		return out, fmt.Errorf("rehash all: %w", err)
	}
	return out, nil
}

// rehash hashes path (with MD5 when dpkg has a record), judges the origin
// and updates the registry.
func (r *Registry) rehash(path string, rec *pkgFile) RehashResult {
	res := RehashResult{Path: path}
	t := r.ticket.Add(1)
	obs, d, err := r.observe(path, rec != nil)
	if err != nil {
		res.Err = fmt.Errorf("rehash %q: %w", path, err)
		return res
	}
	if obs.missing {
		r.apply(path, t, obs, nil)
		res.Err = fmt.Errorf("rehash %q: %w", path, fs.ErrNotExist)
		return res
	}
	if obs.digest == "" {
		res.Err = fmt.Errorf("rehash %q: %w", path, errNotRegular)
		return res
	}
	res.New, res.Key = obs.digest, obs.key
	res.Origin = rec.origin(d.md5)
	found := false
	r.apply(path, t, obs, func(e *entry) {
		found = true
		if len(e.apps) > 0 {
			res.Old = e.apps[0].SHA256
		}
		for i := range e.apps {
			e.apps[i].SHA256 = obs.digest
			if res.Origin.Package != "" {
				e.apps[i].Package = res.Origin.Package
			}
		}
		res.Apps = slices.Clone(e.apps)
	})
	if !found {
		res.Err = fmt.Errorf("rehash %q: %w", path, ErrNotRegistered)
		return res
	}
	r.cache.clear()
	r.log.Info("rehashed executable", "path", path, "sha256", res.New, "old_sha256", res.Old, "origin", res.Origin.String())
	return res
}

func (r *Registry) registered(path string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.entries[path]
	return ok
}
