package relay

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// entry is a live (not yet settled) request. Its fields are guarded by
// hub.mu.
type entry struct {
	rec      protocol.Record
	seq      uint64    // submission order
	rev      uint64    // revision of the last committed change
	deadline time.Time // rec.Created + rec.Timeout on the relay's clock
	// sess holds the lease while the request is delivered.
	sess *session
	// cancelAsked is set once a client asked to cancel a request that is
	// delivered, or queued again after a delivery: one its agent may run
	// or have run.
	cancelAsked bool
	// done is closed once the request's terminal state is committed.
	done chan struct{}
	// ended is closed once the terminal state is known (see endLocked).
	ended chan struct{}
	// maybeRan marks a request recovered after a crash whose delivery may
	// not have been saved: like a delivered one, it is never expired, as
	// an agent may have run it.
	maybeRan bool
	// unsaved marks a terminal state whose commit failed: the entry stays
	// live (and its waiters waiting) until a retry commits it.
	unsaved bool
	// idem is the submission's idempotency key (storedRequest.Idem),
	// never changed once set. A keyed entry's firstStored is closed once
	// its first commit has ended, either way: a retry with the same key
	// waits for it before it answers.
	idem        *idemKey
	firstStored chan struct{}
	// unstored holds a keyed entry, and the queue behind it, back from
	// delivery until its first commit has ended (see hub.enqueue), and,
	// if that commit failed and may or may not have stored the record
	// (firstFailed), until a later commit of it succeeds (hub.storeHeld).
	unstored    bool
	firstFailed bool
}

func newEntry(rec protocol.Record, seq, rev uint64, deadline time.Time) *entry {
	return &entry{rec: rec, seq: seq, rev: rev, deadline: deadline, done: make(chan struct{}), ended: make(chan struct{})}
}

// endLocked wakes the request's waiters. For a result from the agent it is
// called at once, before the result is committed: the agent keeps the
// result (in its journal) until the relay acks it, and the ack follows the
// commit, so a relay crash in between loses nothing; the agent sends the
// same result again. An outcome the relay decides itself (canceled,
// expired, undeliverable) is only known once committed.
func (e *entry) endLocked() {
	select {
	case <-e.ended:
	default:
		close(e.ended)
	}
}

// mayHaveRun reports whether an agent may have started e.
func (e *entry) mayHaveRun() bool { return e.rec.Attempts > 0 || e.maybeRan }

func (e *entry) storedLocked() storedRequest {
	return storedRequest{Record: e.rec, Seq: e.seq, Deadline: e.deadline, Rev: e.rev, CancelAsked: e.cancelAsked, MaybeRan: e.maybeRan,
		Idem: e.idem}
}

// device is the relay's state for one device. Its fields are guarded by
// hub.mu.
type device struct {
	id      string
	queue   []*entry // queued requests, head first
	sess    *session // current agent session, or nil when offline
	meta    deviceMeta
	lastSeq uint64 // highest event seq stored (raised only after its commit)
	// evMu serialises this device's event commits, so an event is never
	// acknowledged while another session's copy of it is still being
	// written, and a welcome waits for the one being written to name its
	// seq (hub.welcomeLastEvent). It is taken before hub.mu, never while
	// holding it.
	evMu sync.Mutex
	// changed is closed and replaced on every event and presence change,
	// so waiters need no registration.
	changed chan struct{}
	// saveMu serialises saves of meta (hub.saveDevice). It is taken
	// before hub.mu, never while holding it.
	saveMu sync.Mutex
}

func newDevice(id string) *device {
	return &device{id: id, changed: make(chan struct{})}
}

func (d *device) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// removeLocked takes e out of the queue; it reports whether e was queued.
func (d *device) removeLocked(e *entry) bool {
	i := slices.Index(d.queue, e)
	if i < 0 {
		return false
	}
	d.queue = slices.Delete(d.queue, i, i+1)
	return true
}

// popLocked removes and returns the head of the queue.
func (d *device) popLocked() *entry {
	e := d.queue[0]
	d.queue[0] = nil
	if len(d.queue) == 1 {
		// Emptied, the queue starts over at the front of its array: a
		// device that takes every request as it comes would otherwise
		// leave it no room, and every submit would allocate another.
		d.queue = d.queue[:0]
	} else {
		d.queue = d.queue[1:]
	}
	return e
}

// pushFrontLocked puts es, already in order, at the head of the queue.
func (d *device) pushFrontLocked(es []*entry) {
	if len(es) == 0 {
		return
	}
	d.queue = append(slices.Clip(es), d.queue...)
}

// changes collects request updates made under hub.mu so they can be
// committed after the lock is released.
type changes struct {
	recs []storedRequest
	done []*entry // entries that reached a terminal state
}

// touchLocked records e's current state as a new revision.
func (c *changes) touchLocked(e *entry) {
	e.rev++
	c.recs = append(c.recs, e.storedLocked())
}

// finishLocked moves e to a terminal state. The caller has already taken e
// out of its queue or lease.
func (c *changes) finishLocked(e *entry, state string, fail *protocol.Failure, now time.Time) {
	t := now.UTC()
	e.rec.State = state
	e.rec.Error = fail
	e.rec.Finished = &t
	e.sess = nil
	c.touchLocked(e)
	c.done = append(c.done, e)
}

// remainingMs is the time from now to deadline in whole milliseconds, at
// least 1 so that the request frame stays valid.
func remainingMs(deadline, now time.Time) int64 {
	ms := deadline.Sub(now).Milliseconds()
	return max(1, min(ms, protocol.MaxTimeoutMs))
}

// newID returns prefix followed by 96 random bits in hex.
func newID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return prefix + hex.EncodeToString(b)
}

// newRequestID returns "r", the time in milliseconds as 12 hex digits,
// then 80 random bits in hex. Ids sort by creation, so the requests a
// checkpoint writes to bbolt sit side by side in a few leaf pages instead
// of one page each, scattered over the tree.
func newRequestID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(b[6:]) // never fails (crypto/rand, Go 1.24+)
	return "r" + hex.EncodeToString(b[:])
}
