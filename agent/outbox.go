package agent

import (
	"time"

	"github.com/tetherhq/tether/protocol"
)

// outbox holds what the agent owes the relay (results and events not yet
// acknowledged) and remembers finished requests so a duplicate delivery is
// answered instead of run again. It is not safe for concurrent use; Agent
// guards it with its mutex.
type outbox struct {
	maxDone    int
	doneWindow time.Duration

	results []pendingResult // unacknowledged, in completion order
	unacked map[string]bool // ids in results

	events  []pendingEvent // unacknowledged, in seq order
	nextSeq uint64
	keys    uint64 // the last pendingEvent.key given

	done map[string]doneEntry // finished requests, acked or not
	// doneOrder holds the ids of done in finishing order, for eviction,
	// from doneHead on: evicting moves the head, and the slice is
	// compacted once the head has passed half of it, so an eviction costs
	// O(1) amortized rather than a copy of every id kept.
	doneOrder []string
	doneHead  int
}

// pendingResult is a result owed to the relay. It is sent only once
// durable: a result must be on disk before anyone learns of it.
type pendingResult struct {
	res     *protocol.Result
	durable bool
}

type pendingEvent struct {
	ev  protocol.Event
	at  time.Time // when it happened, on the monotonic clock
	key uint64    // the outbox's own name for it, which a renumbering keeps
	// fresh marks an event made before this process's first welcome,
	// which no session has had: the first welcome may renumber it.
	fresh   bool
	durable bool
	// held marks an event renumbered by the first welcome whose record
	// under its new seq is not yet on disk: it is not sent until then.
	held bool
	sent bool // to the current session (see Agent.sendEventsLocked)
}

type doneEntry struct {
	res  *protocol.Result
	at   time.Time
	pure bool // neither started nor finished in the journal (see Pure)
}

func newOutbox(maxDone int, window time.Duration) *outbox {
	return &outbox{
		maxDone:    maxDone,
		doneWindow: window,
		unacked:    make(map[string]bool),
		done:       make(map[string]doneEntry),
		nextSeq:    1,
	}
}

// size is the number of entries waiting for an ack.
func (o *outbox) size() int { return len(o.results) + len(o.events) }

// addResult records a finished request and queues its result. pure marks
// a result the journal never holds: it is remembered only until the relay
// acknowledges it (see ack), since running a pure method again is
// harmless, so it takes no place in the dedupe window.
func (o *outbox) addResult(res *protocol.Result, now time.Time, pure bool) {
	o.results = append(o.results, pendingResult{res: res})
	o.unacked[res.ID] = true
	o.done[res.ID] = doneEntry{res: res, at: now, pure: pure}
	if !pure {
		o.doneOrder = append(o.doneOrder, res.ID)
	}
	o.evict(now)
}

// finished returns the result of a request finished within the dedupe
// window.
func (o *outbox) finished(id string) (*protocol.Result, bool) {
	e, ok := o.done[id]
	return e.res, ok
}

// journaled reports whether the journal may hold the result of id, so
// that its ack is worth recording. An id no longer remembered was acked
// already: evicted after its ack, or pure and forgotten at it.
func (o *outbox) journaled(id string) bool {
	e, ok := o.done[id]
	return ok && !e.pure
}

// durable reports whether the result of finished request id is on disk:
// acknowledged results are, owed ones carry a flag.
func (o *outbox) durable(id string) bool {
	if !o.unacked[id] {
		return true
	}
	for _, r := range o.results {
		if r.res.ID == id {
			return r.durable
		}
	}
	return false
}

// evict forgets finished requests beyond the count or age bound, but never
// one whose result still waits for an ack.
func (o *outbox) evict(now time.Time) {
	for o.doneHead < len(o.doneOrder) {
		id := o.doneOrder[o.doneHead]
		over := len(o.doneOrder)-o.doneHead > o.maxDone || now.Sub(o.done[id].at) > o.doneWindow
		if !over || o.unacked[id] {
			break
		}
		delete(o.done, id)
		o.doneOrder[o.doneHead] = ""
		o.doneHead++
	}
	if o.doneHead > 0 && o.doneHead >= len(o.doneOrder)/2 {
		n := copy(o.doneOrder, o.doneOrder[o.doneHead:])
		clear(o.doneOrder[n:])
		o.doneOrder, o.doneHead = o.doneOrder[:n], 0
	}
}

// finishedOrder returns the ids of the finished requests kept, oldest
// first.
func (o *outbox) finishedOrder() []string { return o.doneOrder[o.doneHead:] }

// addEvent queues an event and returns it with its sequence number, and
// the key that names it for markEventDurable. fresh: see pendingEvent.
func (o *outbox) addEvent(name string, data []byte, at time.Time, fresh bool) (protocol.Event, uint64) {
	ev := protocol.Event{Seq: o.nextSeq, Name: name, Data: data}
	o.nextSeq++
	o.keys++
	o.events = append(o.events, pendingEvent{ev: ev, at: at, key: o.keys, fresh: fresh})
	return ev, o.keys
}

// markResultDurable flags the result of id as safely on disk and returns
// it if it is still owed to the relay.
func (o *outbox) markResultDurable(id string) (*protocol.Result, bool) {
	for i := range o.results {
		if o.results[i].res.ID == id {
			o.results[i].durable = true
			return o.results[i].res, true
		}
	}
	return nil, false
}

// markEventDurable flags the event of key as on disk and returns it if
// still owed.
func (o *outbox) markEventDurable(key uint64) (*pendingEvent, bool) {
	for i := range o.events {
		if o.events[i].key == key {
			o.events[i].durable = true
			return &o.events[i], true
		}
	}
	return nil, false
}

// renumberFresh moves the fresh events (a tail of the queue: made after
// everything else, never sent) and the next seq so that they start at from
// or above, and returns the fresh events, the first one's old seq and the
// shift (0: none moved); with no fresh events it moves only the next seq.
// No event is fresh afterwards.
func (o *outbox) renumberFresh(from uint64) (fresh []*pendingEvent, oldFirst, shift uint64) {
	i := len(o.events)
	for i > 0 && o.events[i-1].fresh {
		i--
	}
	tail := o.events[i:]
	first := o.nextSeq
	if len(tail) > 0 {
		first = tail[0].ev.Seq
	}
	if first < from {
		shift = from - first
	}
	fresh = make([]*pendingEvent, len(tail))
	for k := range tail {
		tail[k].fresh = false
		tail[k].ev.Seq += shift
		fresh[k] = &tail[k]
	}
	o.nextSeq += shift
	return fresh, first, shift
}

// frame returns the event as sent now, with its age filled in.
func (pe *pendingEvent) frame(now time.Time) *protocol.Event {
	ev := pe.ev
	ev.AgeMs = now.Sub(pe.at).Milliseconds()
	return &ev
}

// ack drops acknowledged results and every event up to seq, and forgets
// the pure requests among them.
func (o *outbox) ack(ids []string, seq uint64) {
	if len(ids) > 0 {
		for _, id := range ids {
			delete(o.unacked, id)
			if e, ok := o.done[id]; ok && e.pure {
				delete(o.done, id)
			}
		}
		kept := o.results[:0]
		for _, r := range o.results {
			if o.unacked[r.res.ID] {
				kept = append(kept, r)
			}
		}
		clear(o.results[len(kept):])
		o.results = kept
	}
	if seq > 0 {
		// The relay has, or ignores, every seq up to seq: numbering goes
		// on above it, also when it is ahead of this outbox's (a journal
		// that lost its last records).
		o.nextSeq = max(o.nextSeq, seq+1)
		n := 0
		for n < len(o.events) && o.events[n].ev.Seq <= seq {
			n++
		}
		if n > 0 {
			o.events = append(o.events[:0], o.events[n:]...)
		}
	}
}
