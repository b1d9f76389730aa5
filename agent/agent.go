package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

// Executor runs one request on the device. It returns the value of a
// succeeded request, or an error: a *protocol.Failure keeps its code,
// ctx.Err() after cancellation or deadline is reported as such, anything
// else is an internal failure. Execute must honour ctx.
type Executor interface {
	Execute(ctx context.Context, req *protocol.Request) (json.RawMessage, error)
}

// Pure is implemented by executors that know which methods touch no
// hardware (an echo, a status report). The journal exists so that a
// hardware action never runs twice; running such a method again after a
// crash is harmless, so the agent journals neither its start nor its
// result, and answers it without a single fsync. Its result is still kept
// (in memory) until the relay acknowledges it.
type Pure interface {
	Pure(method string) bool
}

// Instant is implemented by executors that know which methods return at
// once, never blocking (an echo). A pure method that is also instant runs
// on the goroutine that read its request, instead of one started for it:
// it costs no hand-off between goroutines and, for as short as it runs,
// holds up nothing else the reader would do. It starts as it arrives and
// ends at once, so its deadline cannot pass meanwhile: its context has
// none, and is canceled only when the agent shuts down.
type Instant interface {
	Instant(method string) bool
}

// Describer is implemented by executors that can say what they offer; the
// agent reports it in hello.
type Describer interface {
	Describe() (board string, methods []string, resources []protocol.Resource)
}

var (
	// ErrOutboxFull is returned by Emit when the outbox is at its bound.
	ErrOutboxFull = errors.New("agent: outbox full")
	// ErrRefused marks a permanent refusal by the relay (bad token,
	// unsupported protocol); the agent retries at the backoff cap.
	ErrRefused = errors.New("agent: refused by relay")
	// ErrStateInUse is returned by New when another agent holds the state
	// directory.
	ErrStateInUse = errors.New("agent: state directory in use")

	errCanceled = errors.New("canceled by relay")
	errShutdown = errors.New("agent shutting down")
)

// Agent is a device agent. Create it with New and start it with Run.
type Agent struct {
	cfg  Config
	exec Executor
	log  *slog.Logger

	// token is the device token in use; in-band rotation replaces it.
	token tokenBox

	// j is the durable journal behind the outbox; nil without a state
	// directory, when the agent remembers only in memory.
	j *journal

	jobsCtx     context.Context // parent of every request's context
	cancelJobs  context.CancelCauseFunc
	jobs        sync.WaitGroup
	compactions sync.WaitGroup // background journal rewrites

	mu sync.Mutex // guards the fields below
	// sess is the live session, nil while disconnected.
	sess *session
	// outstanding counts credits granted on sess not yet used by a request.
	outstanding int
	running     map[string]*job
	out         *outbox
	draining    bool
	// numbered is set by the first welcome: from then on the event
	// numbering stands (see attach).
	numbered bool
	// instance names the journal (or, without one, this process) to the
	// relay: see protocol.Hello.Instance.
	instance string
	// compactAt is the journal size that triggers the next compaction.
	compactAt int64
	// repairAt is when a failed journal may next be rewritten (see
	// repairJournalLocked).
	repairAt time.Time

	// relayFrame is the frame limit of the last welcome (0: none yet).
	relayFrame atomic.Int64
	// changed is closed whenever running or the outbox changes, so
	// waiters can block without polling. It is made only when someone
	// waits: every request changes the state twice, and nobody waits
	// outside shutdown.
	changed chan struct{}
}

type job struct {
	req    *protocol.Request
	cancel context.CancelFunc
	// canceled is set by the relay's cancel, before cancel is called. It
	// stands in for a cancellation cause: a context with a deadline and
	// a cause would take two contexts per request.
	canceled atomic.Bool
	pure     bool // see Pure: not journaled
}

// cause says why ctx, the job's context, ended: the relay's cancel, or
// whatever ended it otherwise (its deadline, the agent's shutdown).
func (j *job) cause(ctx context.Context) error {
	if j.canceled.Load() {
		return errCanceled
	}
	return context.Cause(ctx)
}

// New returns an agent that runs requests on exec.
func New(cfg Config, exec Executor) (*Agent, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if exec == nil {
		return nil, errors.New("agent: nil executor")
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &Agent{
		cfg:        cfg,
		exec:       exec,
		log:        cfg.Logger,
		jobsCtx:    ctx,
		cancelJobs: cancel,
		running:    make(map[string]*job),
		out:        newOutbox(cfg.DedupeCount, cfg.DedupeWindow),
	}
	a.token.set(cfg.Token)
	a.instance = newInstance()
	if cfg.StateDir != "" {
		_, err := os.Stat(filepath.Join(cfg.StateDir, journalFile))
		fresh := errors.Is(err, fs.ErrNotExist)
		if err := a.openJournal(); err != nil {
			cancel(nil)
			return nil, err
		}
		if a.instance, err = stateInstance(cfg.StateDir, fresh, a.instance); err != nil {
			a.j.close()
			cancel(nil)
			return nil, err
		}
	}
	return a, nil
}

// instanceFile, in the state directory, names the journal beside it
// (protocol.Hello.Instance): made with the journal, kept across restarts.
const instanceFile = "instance"

// newInstance returns a new instance name: 64 random bits in hex.
func newInstance() string {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return hex.EncodeToString(b[:])
}

// stateInstance returns the instance of the journal in dir: the one
// recorded beside it, or, for a journal just made (fresh) or one without,
// id, recorded now.
func stateInstance(dir string, fresh bool, id string) (string, error) {
	path := filepath.Join(dir, instanceFile)
	if !fresh {
		if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b)), nil
		}
	}
	if _, err := writeFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", err
	}
	return id, nil
}

// Close releases the journal. Call it after Run has returned.
func (a *Agent) Close() error {
	if a.j == nil {
		return nil
	}
	a.compactions.Wait()
	return a.j.close()
}

// Run keeps a session with the relay until ctx ends, then shuts down in
// order: it stops pulling work, lets running requests finish (cancelling
// them after ShutdownGrace), tries to flush the outbox, and closes the
// session politely. It returns after every goroutine it started is gone.
func (a *Agent) Run(ctx context.Context) error {
	sessCtx, stopSessions := context.WithCancel(context.Background())
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		a.connLoop(sessCtx)
	}()

	<-ctx.Done()
	a.log.Info("agent stopping", "grace", a.cfg.ShutdownGrace)
	// One deadline for the whole shutdown: whatever the handlers leave of
	// it is what the outbox gets to drain.
	grace, cancelGrace := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	defer cancelGrace()

	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
	if !a.waitFor(grace.Done(), func() bool { return len(a.running) == 0 }) {
		a.log.Warn("cancelling requests still running at shutdown")
	}
	a.cancelJobs(errShutdown)
	a.jobs.Wait()
	a.waitFor(grace.Done(), func() bool { return a.out.size() == 0 || a.sess == nil })

	stopSessions()
	loop.Wait()
	a.compactions.Wait()
	a.mu.Lock()
	left := a.out.size()
	a.mu.Unlock()
	if left > 0 {
		a.log.Warn("stopped with unacknowledged results or events", "count", left)
	}
	return nil
}

// waitFor blocks until cond (evaluated under a.mu) holds or timeout fires.
func (a *Agent) waitFor(timeout <-chan struct{}, cond func() bool) bool {
	for {
		a.mu.Lock()
		ok := cond()
		if !ok && a.changed == nil {
			a.changed = make(chan struct{})
		}
		ch := a.changed
		a.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-timeout:
			return false
		}
	}
}

func (a *Agent) notifyLocked() {
	if a.changed != nil {
		close(a.changed)
		a.changed = nil
	}
}

// Emit queues a device event. It is sent now if connected, otherwise after
// the next connect, and kept until acknowledged. It fails with
// ErrOutboxFull at the outbox's bound, and for data too large for a frame.
// If the journal cannot record it, Emit says so, but the event is still
// sent; only a restart before its ack loses it.
func (a *Agent) Emit(name string, data json.RawMessage) error {
	if !protocol.ValidID(name) {
		return fmt.Errorf("agent: bad event name %q", name)
	}
	// An event the relay would refuse, for its data or its size, would be
	// sent again at every reconnect: refuse it here.
	if len(data) > 0 && !json.Valid(data) {
		return errors.New("agent: event data is not JSON")
	}
	probe := protocol.Event{Seq: math.MaxUint64, Name: name, Data: data, AgeMs: math.MaxInt64}
	if b, err := protocol.Encode(&probe); err != nil || len(b) > a.resultLimit() {
		return fmt.Errorf("agent: event of %d bytes of data does not fit in a %d-byte frame", len(data), a.resultLimit())
	}
	a.mu.Lock()
	if len(a.out.events) >= a.cfg.OutboxLimit {
		a.mu.Unlock()
		return ErrOutboxFull
	}
	now := time.Now()
	ev, key := a.out.addEvent(name, data, now, !a.numbered)
	pos := a.recordLocked(record{Op: opEvent, Event: &ev, Time: now.UnixMilli()})
	a.mu.Unlock()

	err := a.durable(pos)
	a.mu.Lock()
	defer a.mu.Unlock()
	// Sent even if the journal failed, as a result is: the event
	// happened. After a restart the journal's numbering may then lag the
	// relay's, which the relay's welcome and acks put right. (By key: the
	// first welcome may have renumbered it meanwhile.)
	a.out.markEventDurable(key)
	a.sendEventsLocked()
	a.maybeCompactLocked()
	a.notifyLocked()
	return err
}

// sendEventsLocked sends the session the durable events it has not had,
// in seq order, up to the first one not yet on disk. Emits finish their
// syncs in any order, but the relay ignores an event at or below the last
// seq it stored: sent out of order, an event would be acked and lost.
func (a *Agent) sendEventsLocked() {
	if a.sess == nil {
		return
	}
	now := time.Now()
	for i := range a.out.events {
		pe := &a.out.events[i]
		if !pe.durable || pe.held {
			return
		}
		if !pe.sent {
			pe.sent = true
			a.sess.send(pe.frame(now))
		}
	}
}

// recordLocked adds journal records in the same critical section as the
// state change they describe, so that a compaction always sees both or
// neither. It returns the position to pass to durable.
func (a *Agent) recordLocked(recs ...record) uint64 {
	if a.j == nil {
		return 0
	}
	return a.j.add(recs...)
}

// durable waits until the journal holds everything up to pos.
func (a *Agent) durable(pos uint64) error {
	if a.j == nil {
		return nil
	}
	return a.j.wait(pos)
}

// Status is a snapshot of the agent for health endpoints and tests.
type Status struct {
	Connected bool
	Running   int
	Outbox    int
	// Syncs counts journal fsyncs since start.
	Syncs uint64
	// Journal is why the journal cannot be written (a full disk, an I/O
	// error), nil while it can: meanwhile requests that touch hardware
	// are refused, until a rewrite of it succeeds.
	Journal error
}

// Status returns the agent's current state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Status{Connected: a.sess != nil, Running: len(a.running), Outbox: a.out.size()}
	if a.j != nil {
		st.Syncs = a.j.syncs.Load()
		st.Journal = a.j.failed()
	}
	return st
}

// hello builds the first frame of a session.
func (a *Agent) hello() *protocol.Hello {
	h := &protocol.Hello{Agent: a.cfg.Version, Board: "unknown", Instance: a.instance}
	if d, ok := a.exec.(Describer); ok {
		h.Board, h.Methods, h.Resources = d.Describe()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.running {
		h.Running = append(h.Running, id)
	}
	// A result still on its way to disk is sent once it is there, maybe
	// after this session's first credits: until then the request counts
	// as running, so that the relay waits for it rather than concluding
	// that this agent does not have it.
	for _, r := range a.out.results {
		if !r.durable {
			h.Running = append(h.Running, r.res.ID)
		}
	}
	h.Journal = protocol.JournalSummary{Outbox: a.out.size(), Entries: len(a.out.done)}
	return h
}

// attach makes s the live session: it resends everything unacknowledged
// and announces the free worker slots. lastEvent is the last event seq the
// relay has stored from this device.
func (a *Agent) attach(s *session, lastEvent uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// The relay ignores events at or below lastEvent. At the first
	// welcome, the events this process made (none sent yet) move above it:
	// without a journal the process numbered them from 1, and a journal
	// may lag the relay (an event sent but not journaled before a
	// restart). At any welcome the next seq moves above it: events owed
	// from before keep theirs, all below it, so seqs still only rise.
	if !a.numbered {
		a.renumberFreshLocked(lastEvent)
		a.numbered = true
	}
	a.out.nextSeq = max(a.out.nextSeq, lastEvent+1)
	a.sess = s
	a.outstanding = 0
	for _, r := range a.out.results {
		if r.durable {
			s.send(r.res)
		}
	}
	for i := range a.out.events {
		a.out.events[i].sent = false
	}
	a.sendEventsLocked()
	a.topUpLocked()
	a.notifyLocked()
}

// renumberFreshLocked moves the events never sent (made before this
// process's first welcome, or recorded by a process that never had one)
// above lastEvent. With a journal, the move (one record: the events
// recorded so far from the first moved one's old seq on go up by the
// shift, and every seq up to lastEvent is done with) also ends the span of
// fresh events, and must be on disk before they are sent, moved or not:
// until then they are held, or a crash would leave them fresh, to be moved
// again, and stored twice.
func (a *Agent) renumberFreshLocked(lastEvent uint64) {
	fresh, from, shift := a.out.renumberFresh(lastEvent + 1)
	if a.j == nil {
		return
	}
	pos := a.recordLocked(record{Op: opEventMove, Seq: lastEvent, From: from, Shift: shift})
	if len(fresh) == 0 {
		return
	}
	keys := make([]uint64, len(fresh))
	for i, pe := range fresh {
		keys[i] = pe.key
		pe.held = true
	}
	a.compactions.Go(func() {
		if err := a.durable(pos); err != nil {
			a.log.Error("renumbered events not journaled; sending them anyway", "err", err)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		for i := range a.out.events {
			if slices.Contains(keys, a.out.events[i].key) {
				a.out.events[i].held = false
			}
		}
		a.sendEventsLocked()
		a.notifyLocked()
	})
}

func (a *Agent) detach(s *session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sess == s {
		a.sess = nil
		a.outstanding = 0
		a.notifyLocked()
	}
}

// topUpLocked grants the relay as many credits as there are free worker
// slots not already promised. While the outbox is full it grants nothing:
// the device stops taking work rather than drop a result.
func (a *Agent) topUpLocked() {
	if a.sess == nil || a.draining || a.out.size() >= a.cfg.OutboxLimit {
		return
	}
	if want := a.cfg.Credits - len(a.running) - a.outstanding; want > 0 {
		a.outstanding += want
		a.sess.send(&protocol.Pull{N: want})
	}
}

// onRequest handles a request frame from session s.
func (a *Agent) onRequest(s *session, r *protocol.Request) {
	a.mu.Lock()
	var run func() // an instant request, run once the lock is let go
	defer func() {
		a.mu.Unlock()
		if run != nil {
			run()
		}
	}()
	if a.outstanding > 0 {
		a.outstanding--
	}
	switch {
	case a.draining:
		// Not started: the lease returns to the relay's queue when this
		// session closes.
		return
	case a.running[r.ID] != nil:
		// Already running from an earlier session; its result will come.
		a.log.Debug("duplicate delivery of running request", "id", r.ID)
	case a.finishedLocked(s, r.ID):
		a.log.Debug("duplicate delivery answered from outbox", "id", r.ID)
	case len(a.running) >= a.cfg.Credits:
		a.log.Warn("relay sent a request beyond the granted credits; ignoring it", "id", r.ID)
	default:
		run = a.startLocked(r)
		return
	}
	a.topUpLocked()
}

// finishedLocked answers a duplicate of a finished request from the
// outbox. A result still on its way to disk is not sent: finish sends it
// once it is durable.
func (a *Agent) finishedLocked(s *session, id string) bool {
	res, ok := a.out.finished(id)
	if ok && a.out.durable(id) {
		s.send(res)
	}
	return ok
}

// startLocked runs r in its own goroutine, or, if it is pure and instant
// (see Instant), returns the function for the caller to run once it has
// let go of the lock. The deadline is taken from the remaining duration on
// the monotonic clock, so the board's wall clock never matters.
func (a *Agent) startLocked(r *protocol.Request) (runNow func()) {
	p, ok := a.exec.(Pure)
	in, _ := a.exec.(Instant)
	pure := ok && p.Pure(r.Method)
	instant := pure && in != nil && in.Instant(r.Method)
	// An instant request runs now, well before its deadline (1 ms away
	// at the least), and returns at once: its context needs no deadline,
	// nor the timer behind one that context.WithDeadline starts and stops.
	ctx, cancel := a.jobsCtx, context.CancelFunc(func() {})
	if !instant {
		ctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Duration(r.TimeoutMs)*time.Millisecond))
	}
	j := &job{req: r, cancel: cancel, pure: pure}
	if !j.pure {
		// A journal that failed is rewritten first, if the disk lets
		// it, so that this request can run.
		a.repairJournalLocked()
	}
	a.running[r.ID] = j
	// "started" must be on disk before the hardware is touched: after a
	// crash it is what stops the request from running twice.
	var pos uint64
	if !j.pure {
		pos = a.recordLocked(record{Op: opStart, ID: r.ID, Idem: r.Idempotent, Time: time.Now().UnixMilli()})
	}
	a.notifyLocked()
	a.jobs.Add(1)
	run := func() {
		defer a.jobs.Done()
		var res *protocol.Result
		if err := a.durable(pos); err != nil {
			a.log.Error("journal failed; not running the request", "id", r.ID, "err", err)
			res = &protocol.Result{ID: r.ID, State: protocol.StateFailed,
				Error: protocol.Errorf(protocol.CodeInternal, "agent journal unavailable: %v", err)}
		} else {
			res = a.execute(ctx, j)
		}
		cancel()
		a.finish(res)
	}
	if instant {
		return run
	}
	go run()
	return nil
}

// execute runs the executor and turns its outcome into a result.
func (a *Agent) execute(ctx context.Context, j *job) *protocol.Result {
	r := j.req
	if ctx.Err() != nil {
		// Over before it started (a request redelivered past its deadline,
		// a cancel or shutdown while the start was being journaled): the
		// hardware is not touched.
		return notStarted(r.ID, j.cause(ctx))
	}
	start := time.Now()
	val, err := a.safeExecute(ctx, r)
	res := &protocol.Result{ID: r.ID, RunMs: time.Since(start).Milliseconds()}
	cause := j.cause(ctx)
	var f *protocol.Failure
	switch {
	case err == nil:
		// Done, even if a cancel came meanwhile: the action happened.
		res.State = protocol.StateSucceeded
		if len(val) == 0 {
			val = json.RawMessage(`{}`)
		}
		res.Value = val
	case errors.Is(cause, errCanceled):
		res.State, res.Error = protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled, "canceled by client")
	case errors.Is(cause, errShutdown):
		res.State, res.Error = protocol.StateFailed, protocol.Errorf(protocol.CodeInterrupted, "agent shut down while the request ran")
	case errors.As(err, &f):
		res.State, res.Error = protocol.StateFailed, f
	case errors.Is(cause, context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		res.State, res.Error = protocol.StateFailed, protocol.Errorf(protocol.CodeTimeout, "deadline passed while running")
	default:
		res.State, res.Error = protocol.StateFailed, protocol.Errorf(protocol.CodeInternal, "%v", err)
	}
	// A frame over the limit would be refused by the relay at every
	// resend, and its journal record by the journal: the value is
	// dropped and the request reported failed.
	a.fitResult(res)
	return res
}

// maxMessage bounds the message of a failed result: a handler's error
// text is for people, and a long one would crowd its frame.
const maxMessage = 1024

// fitResult makes res's frame fit in the relay's frame limit, which also
// bounds its journal record: a frame over it would be refused at every
// resend. A failed result keeps its code and loses the end of its
// message; a value that cannot fit is dropped, and the request reported
// failed with too_large.
func (a *Agent) fitResult(res *protocol.Result) {
	// What a handler returns is checked as the relay checks it.
	if res.Value != nil && !json.Valid(res.Value) {
		a.log.Error("handler returned a value that is not JSON; reporting the request failed", "id", res.ID)
		res.State, res.Value = protocol.StateFailed, nil
		res.Error = protocol.Errorf(protocol.CodeInternal, "handler returned a value that is not JSON")
	}
	if f := res.Error; f != nil && f.Code == "" {
		c := *f
		c.Code = protocol.CodeInternal
		res.Error = &c
	}
	if f := res.Error; f != nil && (len(f.Message) > maxMessage || len(f.Code) > protocol.MaxIDLen) {
		c := *f // the handler's Failure may be shared
		c.Code = c.Code[:min(len(c.Code), protocol.MaxIDLen)]
		c.Message = clipMessage(c.Message, maxMessage)
		res.Error = &c
	}
	limit := a.resultLimit()
	if resultFrameBound(res) <= limit {
		return // the usual result, far below the limit: no encoding to measure it
	}
	n := resultFrameLen(res)
	if n <= limit {
		return
	}
	if res.Value != nil {
		a.log.Error("result too large; reporting the request failed", "id", res.ID, "bytes", n, "limit", limit)
		res.State, res.Value = protocol.StateFailed, nil
		res.Error = protocol.Errorf(protocol.CodeTooLarge, "result frame of %d bytes does not fit in the relay's limit of %d", n, limit)
		return
	}
	c := *res.Error
	res.Error = &c
	for n > limit && c.Message != "" {
		c.Message = clipMessage(c.Message, len(c.Message)/2)
		n = resultFrameLen(res)
	}
}

// clipMessage shortens m to at most max bytes, on a character boundary,
// marking the cut; m is returned as it is if it fits.
func clipMessage(m string, max int) string {
	const mark = "…"
	if len(m) <= max {
		return m
	}
	n := max - len(mark)
	if n <= 0 {
		return ""
	}
	for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(m[n]); i++ {
		n--
	}
	return m[:n] + mark
}

// resultLimit is the largest result frame the agent sends: the limit the
// relay announced in its last welcome, and never over the protocol's
// default, which is what a journal record is sized for.
func (a *Agent) resultLimit() int {
	if n := int(a.relayFrame.Load()); n > 0 {
		return min(n, protocol.MaxFrame)
	}
	return protocol.MaxFrame
}

// resultFrameBound is at least the length of res's frame, without encoding
// it: every byte of its strings counted at the most an escape takes.
func resultFrameBound(res *protocol.Result) int {
	n := 128 + 6*(len(res.ID)+len(res.State)) + len(res.Value)
	if f := res.Error; f != nil {
		n += 32 + 6*(len(f.Code)+len(f.Message))
	}
	return n
}

// resultFrameLen is the length of res's frame.
func resultFrameLen(res *protocol.Result) int {
	// Every field but the value is small: encode them, and add the value.
	v := res.Value
	res.Value = nil
	bp := lenBufs.Get().(*[]byte)
	b, _ := protocol.AppendEncode((*bp)[:0], res)
	n := len(b)
	if cap(b) <= 16<<10 {
		*bp = b
		lenBufs.Put(bp)
	}
	res.Value = v
	if len(v) > 0 {
		n += len(`,"value":`) + len(v)
	}
	return n
}

// lenBufs lends resultFrameLen its buffers.
var lenBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// notStarted is the result of a request whose context ended before the
// executor was called.
func notStarted(id string, cause error) *protocol.Result {
	res := &protocol.Result{ID: id, State: protocol.StateFailed}
	switch {
	case errors.Is(cause, errCanceled):
		res.State, res.Error = protocol.StateCanceled, protocol.Errorf(protocol.CodeCanceled, "canceled by client before it started")
	case errors.Is(cause, context.DeadlineExceeded):
		res.State, res.Error = protocol.StateExpired, protocol.Errorf(protocol.CodeExpired, "deadline passed before it started")
	default:
		res.Error = protocol.Errorf(protocol.CodeInterrupted, "agent shut down before the request ran")
	}
	return res
}

// safeExecute keeps a panicking handler from taking the agent down.
func (a *Agent) safeExecute(ctx context.Context, r *protocol.Request) (val json.RawMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			a.log.Error("handler panic", "id", r.ID, "method", r.Method, "panic", p)
			err = protocol.Errorf(protocol.CodeInternal, "handler panic: %v", p)
		}
	}()
	return a.exec.Execute(ctx, r)
}

// finish records a result, sends it if connected, and frees the slot.
func (a *Agent) finish(res *protocol.Result) {
	now := time.Now()
	a.mu.Lock()
	j := a.running[res.ID]
	delete(a.running, res.ID)
	pure := j != nil && j.pure
	a.out.addResult(res, now, pure)
	if !pure {
		pos := a.recordLocked(record{Op: opResult, ID: res.ID, Result: res, Time: now.UnixMilli()})
		a.mu.Unlock()
		// The result reaches disk before it reaches the relay.
		if err := a.durable(pos); err != nil {
			a.log.Error("result not journaled; sending it anyway", "id", res.ID, "err", err)
		}
		a.mu.Lock()
	}
	defer a.mu.Unlock()
	if r, ok := a.out.markResultDurable(res.ID); ok && a.sess != nil {
		a.sess.send(r)
	}
	a.topUpLocked()
	a.maybeCompactLocked()
	a.notifyLocked()
}

// onCancel cancels a running request; its handler reports canceled.
func (a *Agent) onCancel(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if j := a.running[id]; j != nil {
		j.canceled.Store(true)
		j.cancel()
	}
}

func (a *Agent) onAck(m *protocol.Ack) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Acks are journaled lazily: losing one only causes a resend. The
	// results of pure requests never reach the journal, so neither do
	// their acks; recording them anyway would only grow the buffer of
	// records waiting for the next fsync, which pure traffic never makes.
	// (Asked before the ack, which forgets pure requests.)
	var recs []record
	for _, id := range m.IDs {
		if a.out.journaled(id) {
			recs = append(recs, record{Op: opAck, ID: id})
		}
	}
	a.out.ack(m.IDs, m.Events)
	if m.Events > 0 {
		recs = append(recs, record{Op: opEventAck, Seq: m.Events})
	}
	if len(recs) > 0 {
		a.recordLocked(recs...)
		// A device that only sends events never finishes a request,
		// which is where compactions are otherwise started.
		a.maybeCompactLocked()
	}
	a.topUpLocked()
	a.notifyLocked()
}
