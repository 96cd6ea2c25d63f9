package apps

import "sync"

// eventQueue delivers HashChanged events on out without ever blocking the
// producer: pending events wait in a queue in which later events for a
// path merge into the one not yet delivered, so its length is bounded by
// the number of registered paths.
type eventQueue struct {
	out  chan HashChanged
	done <-chan struct{}
	wake chan struct{}

	mu      sync.Mutex
	pending []HashChanged
}

func newEventQueue(done <-chan struct{}) *eventQueue {
	return &eventQueue{
		out:  make(chan HashChanged),
		done: done,
		wake: make(chan struct{}, 1),
	}
}

// push queues ev, merging it into a queued event for the same path.
func (q *eventQueue) push(ev HashChanged) {
	q.mu.Lock()
	merged := false
	for i := range q.pending {
		if p := &q.pending[i]; p.Path == ev.Path {
			p.New, p.SHA256, p.Key = ev.New, ev.SHA256, ev.Key
			merged = true
			break
		}
	}
	if !merged {
		q.pending = append(q.pending, ev)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// forward sends queued events until done is closed, then closes out.
func (q *eventQueue) forward() {
	defer close(q.out)
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.mu.Unlock()
			select {
			case <-q.wake:
				continue
			case <-q.done:
				return
			}
		}
		ev := q.pending[0]
		q.mu.Unlock()
		select {
		case q.out <- ev:
		case <-q.done:
			return
		}
		q.mu.Lock()
		// The head may have merged newer state while it was offered; it
		// was delivered as offered, so drop only if unchanged.
		if len(q.pending) > 0 && q.pending[0] == ev {
			q.pending = q.pending[1:]
		} else if len(q.pending) > 0 {
			// Newer state merged into the delivered event: deliver the
			// remainder as a new change starting from what was sent.
			q.pending[0].Old, q.pending[0].OldKey = ev.New, ev.Key
		}
		q.mu.Unlock()
	}
}
