package relay

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// redeliveredGrace is how long past its deadline a request that went back
// to the queue after a delivery waits for the device to return. It is not
// expired like a request never delivered: it may have run, and expired
// would tell the client it did not. Redelivered past its deadline, the
// agent answers from its journal, or reports expired if it never started
// it. If no session takes it within the grace, it fails undeliverable.
const redeliveredGrace = 30 * time.Second

// maxCredits bounds the credits a session can accumulate, so a misbehaving
// agent cannot overflow the counter with endless pulls.
const maxCredits = 1 << 20

// hub is the relay's request state machine: device queues, leases, results
// and events. Decisions are made under mu; commits happen after mu is
// released, and nothing is acknowledged before its commit returns.
type hub struct {
	cfg Config
	st  *store
	log *slog.Logger
	met *metrics // nil in tests that build a hub alone

	mu sync.Mutex
	// Guarded by mu:
	live     map[string]*entry  // queued, delivered, and terminal but not yet settled
	devices  map[string]*device // by id, created on first use
	retained []retainedRef      // settled requests, oldest first
	nextSeq  uint64             // Seq of the next submit
	// keys finds kept requests by their idempotency key
	// (idemKey.index → id).
	keys map[string]string

	// behind counts commits nobody waits for (see commitBehind); the
	// store is closed only after them.
	behind sync.WaitGroup
}

// retainedRef points at a finished request kept in the store.
type retainedRef struct {
	id       string
	finished time.Time
	key      string // idemKey.index, or ""
}

// newHub rebuilds the in-memory state from st. No other goroutine can see
// h yet, so the ...Locked helpers are called without the lock.
func newHub(cfg Config, st *store) (*hub, error) {
	h := &hub{
		cfg:     cfg,
		st:      st,
		log:     cfg.Logger,
		live:    make(map[string]*entry),
		devices: make(map[string]*device),
		keys:    make(map[string]string),
		nextSeq: 1,
	}
	metas, seqs, err := st.loadDevices()
	if err != nil {
		return nil, err
	}
	for id, m := range metas {
		d := h.deviceLocked(id)
		d.meta = m
	}
	for id, seq := range seqs {
		h.deviceLocked(id).lastSeq = seq
	}

	var pending []storedRequest
	err = st.loadRequests(func(r storedRequest) {
		h.nextSeq = max(h.nextSeq, r.Seq+1)
		ik := r.Idem.index()
		if ik != "" {
			h.keys[ik] = r.ID
		}
		if protocol.Terminal(r.State) {
			fin := r.Created
			if r.Finished != nil {
				fin = *r.Finished
			}
			h.retained = append(h.retained, retainedRef{id: r.ID, finished: fin, key: ik})
			return
		}
		pending = append(pending, r)
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(h.retained, func(a, b retainedRef) int { return a.finished.Compare(b.finished) })
	// Delivered requests lost their session with the restart: they go
	// first, then the queued ones, each group in submission order.
	slices.SortFunc(pending, func(a, b storedRequest) int {
		ad, bd := a.State == protocol.StateDelivered, b.State == protocol.StateDelivered
		if ad != bd {
			if ad {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	var marked []storedRequest
	for _, r := range pending {
		r.State = protocol.StateQueued
		e := newEntry(r.Record, r.Seq, r.Rev, r.Deadline)
		// Deliveries are committed behind the frame that carries them
		// (takeWork); after a crash, one may not have been saved.
		e.maybeRan = st.unclean || r.MaybeRan
		// A cancel asked before the restart still waits on the device.
		e.cancelAsked = r.CancelAsked
		e.idem = r.Idem
		if e.maybeRan && !r.MaybeRan {
			// Stored now: a clean restart later finds the store clean,
			// and must still know.
			e.rev++
			marked = append(marked, e.storedLocked())
		}
		h.live[r.ID] = e
		d := h.deviceLocked(r.Device)
		d.queue = append(d.queue, e)
	}
	if err := st.putRequests(marked); err != nil {
		return nil, fmt.Errorf("relay: mark requests recovered after a crash: %w", err)
	}
	return h, nil
}

// deviceOf is deviceLocked for a caller that does not hold mu, such as
// one about to take the device's evMu, which comes before mu.
func (h *hub) deviceOf(id string) *device {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deviceLocked(id)
}

// deviceLocked returns the state of device id, creating it if needed.
func (h *hub) deviceLocked(id string) *device {
	d := h.devices[id]
	if d == nil {
		d = newDevice(id)
		h.devices[id] = d
	}
	return d
}

// commit makes c durable and then settles its finished entries, waking
// their waiters. When the commit fails, finished entries stay live and are
// marked unsaved: nothing about them is acknowledged, a duplicate result
// or the sweep commits them again, and the error tells the caller to
// withhold its own acknowledgement.
func (h *hub) commit(c *changes) error {
	return h.settle(c, h.st.putRequests(c.recs))
}

// commitAfter is commit for changes nobody is waiting for: the write
// rides along with the next commit someone waits for (committer.later),
// and after gets the outcome once c is settled, on the goroutine that
// runs the deferred calls' work, which it must not hold up for long; or
// at once, on the caller's, when c holds nothing to write.
func (h *hub) commitAfter(c *changes, after func(err error)) {
	if len(c.recs) == 0 {
		after(h.settle(c, nil))
		return
	}
	h.st.putRequestsLater(c.recs, func(err error) { after(h.settle(c, err)) })
}

// settle finishes a commit of c that ended with err.
func (h *hub) settle(c *changes, err error) error {
	if err != nil {
		h.log.Error("commit failed", "err", err)
	}
	if len(c.done) > 0 {
		h.mu.Lock()
		for _, e := range c.done {
			if err != nil {
				e.unsaved = true
				continue
			}
			e.unsaved = false
			h.settleLocked(e)
		}
		h.mu.Unlock()
	}
	return err
}

// resaveLocked queues the terminal state of unsaved entries for another
// commit.
func (c *changes) resaveLocked(e *entry) {
	c.recs = append(c.recs, e.storedLocked())
	c.done = append(c.done, e)
}

// settleLocked retires a committed terminal entry from memory; from now on
// the store answers for it.
func (h *hub) settleLocked(e *entry) {
	if h.live[e.rec.ID] != e {
		return
	}
	delete(h.live, e.rec.ID)
	e.endLocked()
	close(e.done)
	h.retained = append(h.retained, retainedRef{id: e.rec.ID, finished: *e.rec.Finished, key: e.idem.index()})
	// Every request ends here exactly once, whichever way it ended.
	h.met.requestFinished(&e.rec)
}

// submit stores a new request for device and queues it.
func (h *hub) submit(dev string, sub protocol.Submit) (protocol.Record, error) {
	q, err := h.enqueue(dev, "", sub)
	if err != nil {
		return protocol.Record{}, err
	}
	return q.commit()
}

// queued is a submission enqueue took, which commit stores. It is a value
// rather than a closure, which would cost a REST call, that commits at
// once, an allocation for the closure and another for the record it
// holds.
type queued struct {
	h     *hub
	d     *device
	e     *entry // nil for a repeat of a keyed submission
	rec   storedRequest
	poked bool

	// A repeat's (replay):
	dev, owner string
	sub        protocol.Submit
	id         string
	first      chan struct{}
}

// commit stores the request q holds and returns its record.
func (q *queued) commit() (protocol.Record, error) {
	if q.e == nil {
		return q.h.replay(q.dev, q.owner, q.sub, q.id, q.first)
	}
	if q.poked {
		// The agent's writer, just poked, waits on this P's run queue.
		// Let it send the request before this goroutine blocks in the
		// commit's fdatasync; otherwise it waits for another thread to
		// wake and take it, and the agent's trip no longer overlaps the
		// fsync.
		runtime.Gosched()
	}
	return q.h.store(q.d, q.e, q.rec)
}

// enqueue queues a new request for device and returns it, to be stored
// by its commit: submit in two steps, so a client connection can queue
// its calls in the order they came and let their commits overlap.
//
// A submission with a key (protocol.Submit.Key) that owner, the client,
// gave a kept request before is not queued again: commit answers with
// that request, once its own first commit has ended. A keyed request is
// not delivered before its commit ends (entry.unstored), unlike others:
// if the relay crashed in between, an agent could have run a request
// whose client then submits it again with its key, in the belief that it
// never ran; the relay would have no record of the first, and the action
// would run twice. Requests queued after it wait behind it, so that a
// device still runs requests in the order they came.
func (h *hub) enqueue(dev, owner string, sub protocol.Submit) (queued, error) {
	timeout := h.timeoutOf(sub)
	now := time.Now()
	ik := idemIndex(owner, sub.Key)
	h.mu.Lock()
	if id, ok := h.lookupKeyLocked(ik); ok {
		var first chan struct{}
		if e := h.live[id]; e != nil {
			first = e.firstStored
		}
		h.mu.Unlock()
		return queued{h: h, dev: dev, owner: owner, sub: sub, id: id, first: first}, nil
	}
	d := h.deviceLocked(dev)
	if len(d.queue) >= h.cfg.QueueLimit {
		h.mu.Unlock()
		return queued{}, fmt.Errorf("%w: device %s has %d queued requests", ErrQueueFull, dev, h.cfg.QueueLimit)
	}
	e := newEntry(protocol.Record{
		ID:         newRequestID(now),
		Device:     dev,
		Method:     sub.Method,
		Params:     sub.Params,
		State:      protocol.StateQueued,
		Idempotent: sub.Idempotent,
		Timeout:    protocol.Duration(timeout),
		Created:    now.UTC(),
	}, h.nextSeq, 1, now.Add(timeout))
	h.nextSeq++
	if ik != "" {
		e.idem = &idemKey{Key: sub.Key, Owner: owner, AskedTimeout: sub.Timeout}
		e.firstStored = make(chan struct{})
		e.unstored = true
		h.keys[ik] = e.rec.ID
	}
	rec := e.storedLocked()
	// The request is queued, and may be delivered, while its commit runs:
	// the agent's trip overlaps the fsync. Nobody hears of it before the
	// commit returns (the id is not out yet), so a crash in between is a
	// submit that failed; an agent that ran it meanwhile gets its result
	// acked as unknown.
	h.live[e.rec.ID] = e
	d.queue = append(d.queue, e)
	poked := d.sess != nil && !e.unstored
	if poked {
		d.sess.poke()
	}
	h.mu.Unlock()
	return queued{h: h, d: d, e: e, rec: rec, poked: poked}, nil
}

// store commits the first revision of e, queued by enqueue.
func (h *hub) store(d *device, e *entry, rec storedRequest) (protocol.Record, error) {
	err := h.st.putRequests([]storedRequest{rec})

	h.mu.Lock()
	defer h.mu.Unlock()
	if e.firstStored != nil {
		close(e.firstStored)
		e.unstored = false
		if d.sess != nil {
			d.sess.poke() // it may now be delivered, and what waits behind it
		}
	}
	if err != nil {
		if e.rec.State == protocol.StateQueued && !errors.Is(err, errMaybeStored) && d.removeLocked(e) {
			// Never delivered, and never to come back: it is as if it
			// was never submitted.
			delete(h.live, e.rec.ID)
			if ik := e.idem.index(); ik != "" && h.keys[ik] == e.rec.ID {
				delete(h.keys, ik)
			}
		} else if e.firstStored != nil && e.rec.State == protocol.StateQueued && h.live[e.rec.ID] == e {
			// Keyed, and maybe stored: still held back, for the same
			// reason as before its commit ended. A crash could yet lose
			// the record, and its key would then make the request anew.
			// A repeat or the sweep stores it again (storeHeld).
			e.unstored, e.firstFailed = true, true
		}
		// Otherwise an agent has it, or a restart may replay it: it
		// stays, and its result commits the whole record if the store
		// recovers. The client is told the submit failed, and the id to
		// follow.
		if h.live[e.rec.ID] == e {
			h.met.requestSubmitted(e.rec.Method)
			return protocol.Record{}, &UnstoredError{Request: e.rec, Err: err}
		}
		return protocol.Record{}, err
	}
	h.met.requestSubmitted(e.rec.Method)
	return e.rec, nil
}

// lookupKeyLocked returns the request kept under ik (idemKey.index), if any.
func (h *hub) lookupKeyLocked(ik string) (string, bool) {
	if ik == "" {
		return "", false
	}
	id, ok := h.keys[ik]
	return id, ok
}

// keyKept reports whether owner's idempotency key names a kept request:
// a submission with it is a repeat, which enqueue answers with that
// request.
func (h *hub) keyKept(owner, key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.lookupKeyLocked(idemIndex(owner, key))
	return ok
}

// timeoutOf is the timeout the relay gives a request submitted as sub.
func (h *hub) timeoutOf(sub protocol.Submit) time.Duration {
	timeout := time.Duration(sub.Timeout)
	if timeout <= 0 {
		timeout = h.cfg.DefaultTimeout
	}
	return min(timeout, h.cfg.MaxTimeout)
}

// replay answers a submission whose idempotency key owner gave request
// id before: with id's record, once the commit of id's submission
// (first, if id was live) has ended. If that commit failed and the
// request was dropped, or the request has since been deleted, the key is
// free again and sub is submitted as new. A key given with a different
// submission is refused (codeKeyReused): it is a client's mistake, and
// running either request in the other's place would be wrong.
func (h *hub) replay(dev, owner string, sub protocol.Submit, id string, first chan struct{}) (protocol.Record, error) {
	if first != nil {
		<-first
	}
	if err := h.storeHeld(id); err != nil {
		return protocol.Record{}, err
	}
	rec, asked, err := h.getAsked(id)
	if errors.Is(err, ErrNotFound) {
		h.mu.Lock()
		if ik := idemIndex(owner, sub.Key); h.keys[ik] == id {
			delete(h.keys, ik)
		}
		h.mu.Unlock()
		q, err := h.enqueue(dev, owner, sub)
		if err != nil {
			return protocol.Record{}, err
		}
		return q.commit()
	}
	if err != nil {
		return protocol.Record{}, err
	}
	if diff := submissionDiff(&rec, dev, &sub, h.timeoutOf(sub), asked); diff != "" {
		return protocol.Record{}, protocol.Errorf(codeKeyReused,
			"key %q was given to request %s, which differs from this submission in its %s; use a new key for a new request", sub.Key, id, diff)
	}
	h.met.requestReplayed(rec.Method)
	return rec, nil
}

// storeHeld commits again the record of live request id if its first
// commit failed while it may have stored it (entry.firstFailed), and
// lets the request go to its device once that commit succeeds. While it
// fails, it returns an UnstoredError naming the request: it is not known
// to be stored, and the relay must not say it is.
func (h *hub) storeHeld(id string) error {
	h.mu.Lock()
	e := h.live[id]
	if e == nil || !e.firstFailed || protocol.Terminal(e.rec.State) {
		h.mu.Unlock()
		return nil
	}
	var c changes
	c.touchLocked(e)
	h.mu.Unlock()
	err := h.st.putRequests(c.recs)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		return &UnstoredError{Request: e.rec, Err: err}
	}
	if e.firstFailed {
		e.firstFailed, e.unstored = false, false
		if d := h.devices[e.rec.Device]; d != nil && d.sess != nil {
			d.sess.poke()
		}
	}
	return nil
}

// submissionDiff names the first part of a submission for dev that rec
// was not submitted with, or returns "". A timeout is the same if it is
// the one the first submission gave (asked), or if the relay makes it
// the same now (timeout).
func submissionDiff(rec *protocol.Record, dev string, sub *protocol.Submit, timeout time.Duration, asked protocol.Duration) string {
	switch {
	case rec.Device != dev:
		return "device"
	case rec.Method != sub.Method:
		return "method"
	case !sameJSON(rec.Params, sub.Params):
		return "params"
	case time.Duration(rec.Timeout) != timeout && sub.Timeout != asked:
		return "timeout"
	case rec.Idempotent != sub.Idempotent:
		return "idempotent flag"
	}
	return ""
}

// sameJSON reports whether a and b hold the same JSON value: objects with
// the same members in any order, numbers written the same way.
func sameJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	va, oka := decodeNumbers(a)
	vb, okb := decodeNumbers(b)
	return oka && okb && reflect.DeepEqual(va, vb)
}

func decodeNumbers(raw json.RawMessage) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err == nil
}

// get returns request id from memory or, once settled, from the store.
func (h *hub) get(id string) (protocol.Record, error) {
	rec, _, err := h.getAsked(id)
	return rec, err
}

// getAsked is get, with the timeout a keyed submission gave
// (idemKey.AskedTimeout).
func (h *hub) getAsked(id string) (protocol.Record, protocol.Duration, error) {
	h.mu.Lock()
	if e := h.live[id]; e != nil {
		asked := e.idem.asked()
		rec, err := h.toldLocked(e)
		return rec, asked, err
	}
	h.mu.Unlock()
	r, err := h.st.getRequest(id)
	if err != nil {
		return protocol.Record{}, 0, err
	}
	return r.Record, r.Idem.asked(), nil
}

// wait blocks until request id has ended (see entry.endLocked), ctx ends,
// stop is closed or limit (if positive) has passed, and returns its
// record at that moment. A request live when the wait begins is answered
// from its entry, which keeps its final record after it is settled:
// reading it back from the store would decode its JSON for every caller.
// The limit is a timer of its own rather than a context with a deadline,
// which would cost every REST call a child registered in its request's
// context and removed again.
func (h *hub) wait(ctx context.Context, id string, stop <-chan struct{}, limit time.Duration) (protocol.Record, error) {
	h.mu.Lock()
	e := h.live[id]
	h.mu.Unlock()
	if e == nil {
		return h.get(id)
	}
	var expired <-chan time.Time
	if limit > 0 {
		t := waitTimers.Get().(*time.Timer)
		t.Reset(limit)
		defer func() {
			t.Stop() // no value is left to receive after it
			waitTimers.Put(t)
		}()
		expired = t.C
	}
	select {
	case <-e.ended:
	case <-ctx.Done():
	case <-stop:
	case <-expired:
	}
	h.mu.Lock()
	return h.toldLocked(e)
}

// waitTimers lends wait its timers, stopped: every REST call with ?wait=
// needs one, mostly for less than a millisecond.
var waitTimers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// toldLocked returns e's record for a caller, and unlocks h.mu. A verdict
// of the relay's own (canceled, expired, undeliverable) is told only once
// it is on disk (DESIGN §3): until then e.ended is open, and the verdict
// is committed here first, in case its own commit is still running or
// failed; if this commit fails too, that is the caller's error. Without
// this, a client could hear "canceled" of a request that a restart would
// find queued, and run. A result, which its agent keeps until it is
// acked, is told as soon as it arrives.
func (h *hub) toldLocked(e *entry) (protocol.Record, error) {
	rec := e.rec
	select {
	case <-e.ended:
		h.mu.Unlock()
		return rec, nil
	default:
	}
	if !protocol.Terminal(rec.State) {
		h.mu.Unlock()
		return rec, nil
	}
	var c changes
	c.resaveLocked(e)
	h.mu.Unlock()
	if err := h.commit(&c); err != nil {
		return protocol.Record{}, err
	}
	return rec, nil
}

// cancel cancels a queued request at once or asks the agent to stop a
// delivered one. For a finished request it returns the record and
// ErrTerminal.
func (h *hub) cancel(id string) (protocol.Record, error) {
	h.mu.Lock()
	e := h.live[id]
	if e == nil {
		h.mu.Unlock()
		rec, err := h.get(id)
		if err != nil {
			return rec, err
		}
		return rec, fmt.Errorf("%w: %s is %s", ErrTerminal, id, rec.State)
	}
	switch e.rec.State {
	case protocol.StateQueued:
		if s := h.deviceLocked(e.rec.Device).sess; e.mayHaveRun() && (s == nil || !s.pulled) {
			// Back in the queue after a delivery: its agent may have run
			// it, and its result, if any, may still come. Canceled now,
			// that result would be dropped; the device's next session says
			// (see takeWork). A session that has pulled has said already:
			// what it runs is leased to it, what it kept has come. The
			// cancel is stored before it is acknowledged: a restart must
			// not deliver the request again as if nobody had asked.
			var c changes
			e.cancelAsked = true
			c.touchLocked(e)
			rec := e.rec
			h.mu.Unlock()
			return rec, h.commit(&c)
		}
		var c changes
		h.deviceLocked(e.rec.Device).removeLocked(e)
		c.finishLocked(e, protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled, "canceled by a client before delivery"), time.Now())
		rec := e.rec
		h.mu.Unlock()
		return rec, h.commit(&c)
	case protocol.StateDelivered:
		var c changes
		if !e.cancelAsked && e.sess != nil {
			e.cancelAsked = true
			c.touchLocked(e) // stored, as for a queued one above
			e.sess.cancels = append(e.sess.cancels, id)
			e.sess.poke()
		}
		rec := e.rec
		h.mu.Unlock()
		return rec, h.commit(&c)
	default:
		rec, err := h.toldLocked(e)
		if err != nil {
			return rec, err
		}
		return rec, fmt.Errorf("%w: %s is %s", ErrTerminal, id, rec.State)
	}
}

// addCredits grants s n more credits.
func (h *hub) addCredits(s *session, n int) {
	var c *changes // only for a session's first pull: one per request otherwise
	h.mu.Lock()
	s.credits = min(s.credits+n, maxCredits)
	if !s.pulled {
		s.pulled = true
		if d := h.deviceLocked(s.device); d.sess == s {
			c = new(changes)
			h.resolveCancelsLocked(d, c, time.Now())
		}
	}
	h.mu.Unlock()
	if c != nil {
		h.commitBehind(c)
	}
	s.poke()
}

// resolveCancelsLocked ends canceled the queued requests of d that a
// client asked to cancel while nobody could tell whether they had run
// (see cancel). d's session has just pulled, so it has listed what its
// agent runs (leased to it, no longer queued) and sent the results its
// agent kept (recorded): these, its agent does not have.
func (h *hub) resolveCancelsLocked(d *device, c *changes, now time.Time) {
	kept := d.queue[:0]
	for _, e := range d.queue {
		if e.cancelAsked {
			c.cancelNotHeldLocked(e, now)
			continue
		}
		kept = append(kept, e)
	}
	clear(d.queue[len(kept):])
	d.queue = kept
}

// cancelNotHeldLocked ends canceled a request a client asked to cancel
// and whose device's session has shown that its agent does not have it.
func (c *changes) cancelNotHeldLocked(e *entry, now time.Time) {
	c.finishLocked(e, protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled, "canceled by a client; the device did not have it"), now)
}

// seen notes traffic from s's device.
func (h *hub) seen(s *session) {
	h.mu.Lock()
	h.deviceLocked(s.device).meta.LastSeen = time.Now().UTC()
	h.mu.Unlock()
}

// work is what a session's writer must send next.
type work struct {
	cancels  []string
	requests []protocol.Request
}

// takeWork leases up to s's credits of queued requests to s. The
// deliveries are committed behind the frames, not before them: what a
// lost delivery record could change after a crash is covered by
// entry.maybeRan (never expire what may have run) and by the agent's
// journal (never run twice); only the attempt count can come back lower.
// Requests found expired or out of attempts on the way are finished
// instead, and settled once committed.
func (h *hub) takeWork(s *session) (work, error) {
	var (
		c   changes
		out work
	)
	now := time.Now()
	h.mu.Lock()
	d := h.deviceLocked(s.device)
	if d.sess != s || s.closing() {
		// A session on its way out takes no new leases: each would cost
		// its request a delivery attempt the agent never sees.
		h.mu.Unlock()
		return out, nil
	}
	out.cancels, s.cancels = s.cancels, nil
	for s.credits > 0 && len(d.queue) > 0 && !d.queue[0].unstored {
		e := d.popLocked()
		switch {
		case e.cancelAsked:
			// A session takes work only after its hello, which re-leased
			// what its agent still runs, and after the results its agent
			// kept, which came before its credits: this agent does not
			// have the request, so it never ran here, or its result has
			// been recorded.
			c.cancelNotHeldLocked(e, now)
		case !now.Before(e.deadline) && !e.mayHaveRun():
			c.finishLocked(e, protocol.StateExpired, protocol.Errorf(protocol.CodeExpired, "deadline passed before delivery"), now)
		case e.rec.Attempts >= h.cfg.MaxAttempts:
			c.finishLocked(e, protocol.StateFailed, protocol.Errorf(protocol.CodeUndeliverable,
				"delivered %d times without a result", e.rec.Attempts), now)
		default:
			e.rec.Attempts++
			e.rec.State = protocol.StateDelivered
			e.sess = s
			s.leases[e.rec.ID] = e
			s.credits--
			c.touchLocked(e)
			out.requests = append(out.requests, protocol.Request{
				ID:         e.rec.ID,
				Method:     e.rec.Method,
				Params:     e.rec.Params,
				TimeoutMs:  remainingMs(e.deadline, now),
				Attempt:    e.rec.Attempts,
				Idempotent: e.rec.Idempotent,
			})
		}
	}
	h.mu.Unlock()
	h.commitBehind(&c)
	return out, nil
}

// commitBehind commits c without making the caller wait for it. A later
// commit of the same request never goes backwards (revisions), so it may
// land before or after one made behind it.
func (h *hub) commitBehind(c *changes) {
	if len(c.recs) == 0 {
		return
	}
	h.behind.Add(1)
	h.commitAfter(c, func(err error) {
		defer h.behind.Done()
		if err != nil {
			h.log.Error("commit deliveries", "err", err)
		}
	})
}

// attach makes s the device's session, replacing (and stopping) an older
// one, and re-leases the requests hello says are still running.
func (h *hub) attach(s *session, hello *protocol.Hello) error {
	var c changes
	now := time.Now()
	running := make(map[string]bool, len(hello.Running))
	for _, id := range hello.Running {
		running[id] = true
	}

	h.mu.Lock()
	d := h.deviceLocked(s.device)
	if old := d.sess; old != nil {
		h.releaseLocked(d, old, running, s, &c, now)
		old.stop(closeReplaced, protocol.ReplacedReason)
	}
	d.sess = s
	for _, id := range hello.Running {
		e := h.live[id]
		if e == nil || e.rec.Device != d.id || e.rec.State != protocol.StateQueued {
			continue
		}
		d.removeLocked(e)
		e.rec.State = protocol.StateDelivered
		e.rec.Attempts = max(e.rec.Attempts, 1)
		e.sess = s
		s.leases[id] = e
		if e.cancelAsked {
			s.cancels = append(s.cancels, id)
		}
		c.touchLocked(e)
	}
	if hello.Instance != "" && d.meta.Instance != "" && hello.Instance != d.meta.Instance {
		h.strandLocked(d, running, &c, now)
	}
	d.meta = deviceMeta{
		LastSeen:  now.UTC(),
		Agent:     hello.Agent,
		Board:     hello.Board,
		Methods:   hello.Methods,
		Resources: hello.Resources,
		Instance:  hello.Instance,
	}
	d.notifyLocked()
	h.mu.Unlock()

	if err := h.commit(&c); err != nil {
		return err
	}
	return h.saveDevice(d)
}

// saveDevice stores d's meta as it is now. Saves of one device take turns
// and each writes the latest meta, so that an older save (a replaced
// session's detach) cannot land after a newer one (the next hello's
// instance) and leave it behind for the next start.
func (h *hub) saveDevice(d *device) error {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	h.mu.Lock()
	meta := d.meta
	h.mu.Unlock()
	return h.st.putDevice(d.id, meta)
}

// strandLocked ends the requests of d that may have run on an agent
// instance other than the one now attached (a new state directory, or
// another agent holding the device's token): that agent's journal, which
// would answer a second delivery, is not the new one's, so delivering
// them again could run them twice. Idempotent requests may run again and
// stay queued, as do those the new agent says it runs.
func (h *hub) strandLocked(d *device, running map[string]bool, c *changes, now time.Time) {
	var keep []*entry
	for _, e := range d.queue {
		if !e.mayHaveRun() || e.rec.Idempotent || running[e.rec.ID] {
			keep = append(keep, e)
			continue
		}
		if e.cancelAsked {
			c.finishLocked(e, protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled,
				"canceled by a client; it may have run on an agent of this device that did not come back (a new state directory, or another agent with its token)"), now)
			continue
		}
		c.finishLocked(e, protocol.StateFailed, protocol.Errorf(protocol.CodeInterrupted,
			"may have run on an agent of this device that did not come back (a new state directory, or another agent with its token); not run again"), now)
	}
	d.queue = keep
}

// detach ends s: its leased requests go back to the head of the queue.
func (h *hub) detach(s *session) {
	var c changes
	now := time.Now()
	h.mu.Lock()
	d := h.deviceLocked(s.device)
	if d.sess != s {
		// Never attached, or replaced: attach already released the leases.
		h.mu.Unlock()
		return
	}
	h.releaseLocked(d, s, nil, nil, &c, now)
	d.sess = nil
	d.meta.LastSeen = now.UTC()
	d.notifyLocked()
	h.mu.Unlock()

	if err := h.commit(&c); err != nil {
		h.log.Error("requeue after session end", "device", s.device, "err", err)
	}
	if err := h.saveDevice(d); err != nil {
		h.log.Error("save device", "device", s.device, "err", err)
	}
}

// releaseLocked takes every lease from old. Leases listed in keep move to
// the session to; the others go back to the head of the queue in submission
// order, except those a client asked to cancel, which end canceled.
func (h *hub) releaseLocked(d *device, old *session, keep map[string]bool, to *session, c *changes, now time.Time) {
	leases := make([]*entry, 0, len(old.leases))
	for _, e := range old.leases {
		leases = append(leases, e)
	}
	clear(old.leases)
	slices.SortFunc(leases, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
	var back []*entry
	for _, e := range leases {
		if to != nil && keep[e.rec.ID] {
			e.sess = to
			to.leases[e.rec.ID] = e
			if e.cancelAsked {
				to.cancels = append(to.cancels, e.rec.ID)
			}
			continue
		}
		// A request a client asked to cancel goes back too, still asked:
		// its agent may have run it and may report so from its journal
		// when it is back (see takeWork).
		e.sess = nil
		e.rec.State = protocol.StateQueued
		c.touchLocked(e)
		back = append(back, e)
	}
	d.pushFrontLocked(back)
}

// resultCommit makes a result's outcome durable and tells whether the
// agent may be acked: either wait, a call that blocks, or the changes to
// commit with commitAfter, which needs no goroutine to wait for them
// (a first result, or none for a result to drop).
type resultCommit struct {
	wait   func() error
	behind *changes
}

// result records res unless the request already ended. The decision and
// the in-memory change happen now, under the lock, so the slot the result
// frees is never visible as still delivered; what it returns makes the
// outcome durable.
func (h *hub) result(s *session, res *protocol.Result) resultCommit {
	var c changes
	h.mu.Lock()
	e := h.live[res.ID]
	if e == nil || e.rec.Device != s.device {
		// Unknown, another device's, or settled long ago: ack so the agent
		// drops it.
		h.mu.Unlock()
		return resultCommit{behind: &c}
	}
	if protocol.Terminal(e.rec.State) {
		if e.unsaved {
			// The first result's commit failed: try again, and ack only
			// if this one succeeds.
			c.resaveLocked(e)
			h.mu.Unlock()
			return resultCommit{wait: func() error { return h.commit(&c) }}
		}
		// A first result is being committed; ack this one after it, and
		// only if it was saved.
		done := e.done
		h.mu.Unlock()
		return resultCommit{wait: func() error {
			select {
			case <-done:
				return nil
			case <-s.quit:
				return ErrClosed
			}
		}}
	}
	if e.rec.State == protocol.StateQueued {
		h.deviceLocked(e.rec.Device).removeLocked(e)
	} else if e.sess != nil {
		delete(e.sess.leases, e.rec.ID)
	}
	if res.State == protocol.StateSucceeded {
		e.rec.Result = res.Value
	}
	e.rec.RunMs = res.RunMs
	c.finishLocked(e, res.State, res.Error, time.Now())
	e.endLocked()
	h.mu.Unlock()
	// Only the agent's ack waits for this commit (clients were told
	// above), so it rides along with the next one a client waits for.
	return resultCommit{behind: &c}
}

// event stores ev for s's device unless its seq was seen before, and
// returns the last seq stored from the device, which the agent is acked.
// Once s is no longer the device's session it stores nothing and reports
// !ok (no ack): the welcome of the session that replaced it named the
// last seq stored (welcomeLastEvent), and that session's agent, if it is
// another one (a new state directory, none), numbers its events from
// there; an event stored from s now would take the seq of one of them,
// which the relay would then ignore. An agent that still owes ev sends it
// again on its next session.
func (h *hub) event(s *session, ev *protocol.Event) (last uint64, ok bool, err error) {
	now := time.Now()
	d := h.deviceOf(s.device)
	// lastSeq only rises after a commit, and commits of one device's
	// events take turns: an event at or below it is on disk.
	d.evMu.Lock()
	defer d.evMu.Unlock()
	h.mu.Lock()
	if d.sess != s {
		h.mu.Unlock()
		return 0, false, nil
	}
	if last := d.lastSeq; ev.Seq <= last {
		h.mu.Unlock()
		return last, true, nil
	}
	h.mu.Unlock()

	rec := protocol.EventRecord{
		Seq:  ev.Seq,
		Name: ev.Name,
		Data: ev.Data,
		Time: now.Add(-time.Duration(ev.AgeMs) * time.Millisecond).UTC(),
	}
	err = h.st.putEvent(s.device, rec, h.cfg.EventsKept)

	if err != nil {
		return 0, false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	d.lastSeq = max(d.lastSeq, ev.Seq)
	d.notifyLocked()
	return d.lastSeq, true, nil
}

// sweep expires queued requests past their deadline and deletes finished
// ones beyond the retention limits.
func (h *hub) sweep(now time.Time) {
	var c changes
	cutoff := now.Add(-h.cfg.ResultRetention)

	var held []string
	h.mu.Lock()
	for _, e := range h.live {
		if e.unsaved {
			c.resaveLocked(e)
		}
		if e.firstFailed {
			held = append(held, e.rec.ID)
		}
	}
	for _, d := range h.devices {
		kept := d.queue[:0]
		for _, e := range d.queue {
			switch {
			case now.Before(e.deadline):
				kept = append(kept, e)
			case !e.mayHaveRun():
				c.finishLocked(e, protocol.StateExpired, protocol.Errorf(protocol.CodeExpired, "deadline passed while queued"), now)
			case now.Before(e.deadline.Add(redeliveredGrace)):
				// Delivered before, so it may have run: only the agent can
				// say, from its journal, when it is delivered again.
				kept = append(kept, e)
			case e.cancelAsked:
				c.finishLocked(e, protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled,
					"canceled by a client; the device did not report back within %v of the deadline, and may have run it", redeliveredGrace), now)
			default:
				c.finishLocked(e, protocol.StateFailed, protocol.Errorf(protocol.CodeUndeliverable,
					"delivered %d times; the device did not report back within %v of the deadline", e.rec.Attempts, redeliveredGrace), now)
			}
		}
		clear(d.queue[len(kept):])
		d.queue = kept
	}
	var dropped []retainedRef
	for len(h.retained) > 0 && (h.retained[0].finished.Before(cutoff) || len(h.retained) > h.cfg.MaxRetained) {
		dropped = append(dropped, h.retained[0])
		h.retained = h.retained[1:]
	}
	h.mu.Unlock()

	if err := h.commit(&c); err != nil {
		h.log.Error("sweep: expire", "err", err)
	}
	for _, id := range held {
		if err := h.storeHeld(id); err != nil {
			h.log.Error("sweep: store a held request", "id", id, "err", err)
		}
	}
	if len(dropped) == 0 {
		return
	}
	drop := make([]string, len(dropped))
	for i, r := range dropped {
		drop[i] = r.id
	}
	if err := h.st.deleteRequests(drop); err != nil {
		// They stay the oldest kept, for the next sweep to delete.
		h.log.Error("sweep: delete old results", "err", err)
		h.mu.Lock()
		h.retained = append(dropped, h.retained...)
		h.mu.Unlock()
		return
	}
	// Their keys are free again.
	h.mu.Lock()
	for _, r := range dropped {
		if r.key != "" && h.keys[r.key] == r.id {
			delete(h.keys, r.key)
		}
	}
	h.mu.Unlock()
}

// deviceInfo describes device id.
func (h *hub) deviceInfo(id string) protocol.DeviceInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.deviceLocked(id)
	info := protocol.DeviceInfo{
		ID:        id,
		Online:    d.sess != nil,
		Agent:     d.meta.Agent,
		Board:     d.meta.Board,
		Methods:   d.meta.Methods,
		Resources: d.meta.Resources,
		Queued:    len(d.queue),
	}
	if !d.meta.LastSeen.IsZero() {
		t := d.meta.LastSeen
		info.LastSeen = &t
	}
	return info
}

// pending returns the requests of device id that have not ended, in the
// order its agent gets them: those its agent holds now, then its queue.
// keep filters them (by the asking client's scope).
func (h *hub) pending(id string, keep func(method string) bool) []protocol.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.deviceLocked(id)
	var held []*entry
	if d.sess != nil {
		for _, e := range d.sess.leases {
			held = append(held, e)
		}
		slices.SortFunc(held, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
	}
	out := make([]protocol.Record, 0, len(held)+len(d.queue))
	for _, e := range append(held, d.queue...) {
		if keep(e.rec.Method) {
			out = append(out, e.rec)
		}
	}
	return out
}

// changed returns a channel closed at the next event or presence change of
// device id.
func (h *hub) changed(id string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deviceLocked(id).changed
}

// lastEventSeq returns the highest event seq stored for device id.
func (h *hub) lastEventSeq(id string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deviceLocked(id).lastSeq
}

// welcomeLastEvent returns the last event seq stored for s's device, for
// the welcome of s, which attach has made the device's session. It waits
// for an event another session is storing: so the seq counts every event
// stored from the device before s, and none is stored from another
// session after it (see event).
func (h *hub) welcomeLastEvent(s *session) uint64 {
	d := h.deviceOf(s.device)
	d.evMu.Lock()
	defer d.evMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	return d.lastSeq
}
