package apps

import (
	"container/list"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/aegisfw/aegis/helper/rules"
)

// Result is the outcome of verifying one executable.
type Result struct {
	// SHA256 is the digest of the checked file.
	SHA256 string
	// Path is the registered path whose file the checked file is (same
	// Key), or empty when it is none of them.
	Path string
	// Apps are the apps registered at Path whose SHA-256 the file has: the
	// identities the file is trusted as. Empty means unknown: a file at
	// an unregistered path, or a registered file whose content changed.
	// Callers must not modify the slice; cached results share it.
	Apps []rules.App
	// Copies are other registered paths whose apps have this SHA-256: the
	// checked file is a copy of them, which does not make it trusted.
	Copies []string
}

// Known reports whether the file is a registered app with a valid hash.
func (r Result) Known() bool { return len(r.Apps) > 0 }

// Check verifies the open executable f (normally /proc/<tgid>/exe) whose
// kernel identity is key. It fstats f and returns an error wrapping
// ErrKeyMismatch when f is not the file key names. A result for key is
// cached, so checking an unchanged binary again costs an fstat and a map
// lookup and hashes nothing; the entry is dropped when the registry sees
// the file at a registered path change or the registered apps change,
// and the cache is bounded by Config.CacheSize (least recently used
// entries go first). Otherwise f is hashed and matched: see Result. A
// file modified during hashing gives an error wrapping
// ErrChangedWhileHashing; nothing is cached then.
//
// Because key includes the change time, a binary rewritten in place or
// replaced has a new key and is hashed again even before the watcher
// reports the change.
func (r *Registry) Check(key Key, f *os.File) (Result, error) {
	got, err := FileKey(f)
	if err != nil {
		return Result{}, fmt.Errorf("check executable: %w", err)
	}
	if got != key {
		return Result{}, fmt.Errorf("check %s: fstat %+v, kernel %+v: %w", f.Name(), got, key, ErrKeyMismatch)
	}
	if res, ok := r.cache.get(key); ok {
		r.hits.Add(1)
		return res, nil
	}
	r.misses.Add(1)
	gen := r.cache.generation()
	d, err := r.hasher.hashFile(f, false)
	if err != nil {
		return Result{}, fmt.Errorf("check executable: %w", err)
	}
	if d.key != key {
		return Result{}, fmt.Errorf("check %s: %w", f.Name(), ErrChangedWhileHashing)
	}
	res := r.match(key, hexDigest(d.sha256))
	r.cache.put(key, res, gen)
	return res, nil
}

// match finds the registered path whose file has key and the apps there
// with digest sum, and the other registered paths with that digest. A
// path whose recorded key is stale (the watcher has not caught up yet) is
// stat'ed again when its digest matches, so a fresh replacement with the
// same content is recognised at once.
func (r *Registry) match(key Key, sum string) Result {
	res := Result{SHA256: sum}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for p, e := range r.entries {
		same := false
		for _, a := range e.apps {
			if a.SHA256 == sum {
				same = true
				break
			}
		}
		isFile := !e.obs.missing && e.observed && e.obs.key == key
		if !isFile && same {
			k, err := statKey(p)
			isFile = err == nil && k == key
		}
		switch {
		case isFile:
			res.Path = p
			for _, a := range e.apps {
				if a.SHA256 == sum {
					res.Apps = append(res.Apps, a)
				}
			}
		case same:
			res.Copies = append(res.Copies, p)
		}
	}
	slices.Sort(res.Copies)
	return res
}

// resultCache is a bounded LRU map from Key to Result. A generation
// counter, bumped by every invalidation, keeps a result computed before an
// invalidation from being stored after it.
type resultCache struct {
	mu  sync.Mutex
	max int
	gen uint64
	ll  *list.List // of *cacheEntry, most recent first
	m   map[Key]*list.Element
}

type cacheEntry struct {
	key Key
	res Result
}

func newResultCache(max int) *resultCache {
	return &resultCache{max: max, ll: list.New(), m: make(map[Key]*list.Element)}
}

func (c *resultCache) get(k Key) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return Result{}, false
	}
	c.ll.MoveToFront(el)
	return el.Value.(*cacheEntry).res, true
}

func (c *resultCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put stores res unless the cache was invalidated since gen was read.
func (c *resultCache) put(k Key, res Result, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if el, ok := c.m[k]; ok {
		el.Value.(*cacheEntry).res = res
		c.ll.MoveToFront(el)
		return
	}
	c.m[k] = c.ll.PushFront(&cacheEntry{key: k, res: res})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*cacheEntry).key)
	}
}

// invalidate drops the results that mention path and those for keys.
func (c *resultCache) invalidate(path string, keys ...Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, k := range keys {
		if el, ok := c.m[k]; ok {
			c.ll.Remove(el)
			delete(c.m, k)
		}
	}
	for el := c.ll.Front(); el != nil; {
		next := el.Next()
		ce := el.Value.(*cacheEntry)
		if ce.res.Path == path || slices.Contains(ce.res.Copies, path) {
			c.ll.Remove(el)
			delete(c.m, ce.key)
		}
		el = next
	}
}

func (c *resultCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.ll.Init()
	clear(c.m)
}

func (c *resultCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
