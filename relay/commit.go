package relay

import (
	"runtime"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// laterDelay is how long a deferred commit (see committer.later) waits for
// a commit someone is waiting for, to ride along with it, before it
// commits on its own.
const laterDelay = 5 * time.Millisecond

// committer group-commits bbolt write transactions. A call made while no
// commit runs commits at once, alone; calls made while one runs wait and
// share the next commit (one write, one pair of fsyncs). So a lone request
// pays no batching delay, and under load the commits grow with the load.
//
// bbolt's own Batch instead holds every commit for MaxBatchDelay, waiting
// for company; a round trip makes three commits (submit, delivery,
// result), so even 1 ms there was 3 ms of idle waiting per request.
//
// Commits nobody is waiting for (a delivery, a result whose only reader
// is the agent's ack) are deferred with later: they join the next commit
// someone waits for instead of taking a disk round of their own ahead of
// it, and commit alone only after laterDelay without one.
//
// As with Batch, a function may run more than once (a failing one is
// dropped and the rest of its group rerun), so it must be idempotent.
//
// The same machinery commits the request log (see wal): Op is what one
// call commits, run what commits a group of them.
type committer[Op any] struct {
	// run commits group as one unit and finishes every call in it. It is
	// never called twice at once.
	run func(group []*commitCall[Op])
	// delay is laterDelay, except in tests.
	delay time.Duration

	// calls keeps the calls of do (with their channels) for reuse: one
	// is taken per commit someone waits for, which under load is one per
	// request.
	calls sync.Pool

	mu sync.Mutex
	// Guarded by mu:
	busy     bool              // a caller is committing (or about to)
	next     []*commitCall[Op] // waiting for the next commit
	deferred []*commitCall[Op] // deferred: join the next commit
	timer    *time.Timer       // commits the deferred ones if nothing else does
	afters   []*commitCall[Op] // committed deferred calls whose after is to run
	running  bool              // a goroutine runs afters (runAfters)
}

type commitCall[Op any] struct {
	op    Op
	done  chan error      // the outcome of op's commit (do)
	after func(err error) // or, for a deferred call, what to run with it
	err   error           // a deferred call's outcome, for after
	lead  chan struct{}   // this caller is to commit the next group
}

// finish hands the call the outcome of its commit: a waiting caller at
// once, a deferred call once the group's waiters are all told (see
// commitNext).
func (c *commitCall[Op]) finish(err error) {
	if c.after != nil {
		c.err = err
		return
	}
	c.done <- err
}

// txFunc is a bbolt committer's Op: a piece of a read-write transaction.
// A nil txFunc does nothing.
type txFunc = func(*bolt.Tx) error

// newCommitter returns a committer of bbolt transactions on db.
func newCommitter(db *bolt.DB) *committer[txFunc] {
	return &committer[txFunc]{run: func(group []*commitCall[txFunc]) { runTx(db, group) }, delay: laterDelay}
}

// do commits op, possibly in one group with others, and returns once that
// group has committed or failed.
func (g *committer[Op]) do(op Op) error {
	c, _ := g.calls.Get().(*commitCall[Op])
	if c == nil {
		c = &commitCall[Op]{done: make(chan error, 1), lead: make(chan struct{}, 1)}
	}
	c.op = op
	g.mu.Lock()
	g.next = append(g.next, c)
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if lead {
		g.commitNext()
	}
	for {
		select {
		case err := <-c.done:
			// Both channels are empty again: the lead comes only
			// before the call's commit, and done once, after it.
			var none Op
			c.op = none
			g.calls.Put(c)
			return err
		case <-c.lead:
			g.commitNext()
		}
	}
}

// later queues op for a commit it does not lead: the next one someone
// waits for, or its own after laterDelay. after gets the outcome once
// that commit's waiters have theirs, on the one goroutine that runs the
// after functions of deferred calls, in the order they were committed.
func (g *committer[Op]) later(op Op, after func(err error)) {
	c := &commitCall[Op]{op: op, after: after}
	g.mu.Lock()
	g.deferred = append(g.deferred, c)
	if g.timer == nil {
		g.timer = time.AfterFunc(g.delay, g.flush)
	}
	g.mu.Unlock()
}

// flush commits the deferred calls, if a commit has not taken them yet.
func (g *committer[Op]) flush() {
	g.mu.Lock()
	g.timer = nil
	pending := len(g.deferred) > 0
	g.mu.Unlock()
	if pending {
		var none Op
		g.do(none)
	}
}

// commitNext commits every waiting call and every deferred one, then hands
// the lead to the first call that arrived meanwhile, or ends the busy
// period. The caller is part of the group it commits, so leading never
// delays it beyond its own commit.
func (g *committer[Op]) commitNext() {
	g.mu.Lock()
	group := append(g.deferred, g.next...)
	// The deferred calls lead the group; run leaves its slice as it is.
	deferred := group[:len(g.deferred):len(g.deferred)]
	g.next, g.deferred = nil, nil
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	g.mu.Unlock()

	g.run(group)

	g.mu.Lock()
	// What runs on a deferred call's outcome (settling requests, acking
	// agents) is nobody's wait: it runs off the path of the caller that
	// led, who is waiting to answer a client of its own, on one goroutine
	// at a time, so in the order the calls were committed.
	if len(deferred) > 0 {
		g.afters = append(g.afters, deferred...)
		if !g.running {
			g.running = true
			go g.runAfters()
		}
	}
	if len(g.next) > 0 {
		g.next[0].lead <- struct{}{}
	} else {
		g.busy = false
	}
	g.mu.Unlock()
}

// runAfters runs the after functions of committed deferred calls until
// none is left. It yields first: the leader that started it has just
// readied the writer of its own caller's answer, and that write is on
// someone's path where these are not (a /v1/client writer yields once
// before it writes, and would otherwise wait for them).
func (g *committer[Op]) runAfters() {
	runtime.Gosched()
	for {
		g.mu.Lock()
		batch := g.afters
		g.afters = nil
		if len(batch) == 0 {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		for _, c := range batch {
			c.after(c.err)
		}
	}
}

// runTx commits group in one bbolt transaction. A function that fails
// gets its error alone and the others are committed without it.
func runTx(db *bolt.DB, group []*commitCall[txFunc]) {
	for len(group) > 0 {
		failed := -1
		err := db.Update(func(tx *bolt.Tx) error {
			for i, c := range group {
				if c.op == nil {
					continue
				}
				if err := c.op(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, c := range group {
				c.finish(err)
			}
			return
		}
		group[failed].finish(err)
		group = append(group[:failed:failed], group[failed+1:]...)
	}
}
