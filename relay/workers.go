package relay

import (
	"sync"
	"time"
)

// workerIdle is how long a worker waits for its next task before it ends:
// between one and two of these.
const workerIdle = time.Second

// workers runs a loop's short tasks, read turns and writer runs, on
// goroutines that outlive one task. A goroutine started per task begins
// with a small stack and grows it, by copying, through the JSON decoding
// of every frame: under load that was 6% of the relay's CPU. A worker
// keeps its grown stack for the next task, and ends once it has been idle
// for workerIdle, so idle sessions still hold no goroutine.
//
// Idle workers wait on a stack, each on a channel of its own, and the one
// idle for the shortest time takes the next task (its stack is the most
// likely to be in cache). A worker between tasks only receives from its
// channel: a select over a task, an idle timer and a quit channel, with
// the timer reset after every task, cost 5% of the relay's CPU under
// load. A sweep every workerIdle, while any worker is idle, ends those
// that were idle through a whole period.
type workers struct {
	mu      sync.Mutex
	idle    []*worker // the most recently idle last
	epoch   uint64    // sweeps so far
	sweep   *time.Timer
	armed   bool // sweep is pending
	closing bool
	wg      sync.WaitGroup
}

type worker struct {
	next  chan func() // one slot; nil ends the worker
	epoch uint64      // workers.epoch when it went idle
}

func newWorkers() *workers {
	w := &workers{}
	w.sweep = time.AfterFunc(time.Hour, w.retire)
	w.sweep.Stop()
	return w
}

// run runs fn on an idle worker, or on a new one.
func (w *workers) run(fn func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		wk := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		wk.next <- fn // never blocks: an idle worker's slot is empty
		return
	}
	w.wg.Add(1)
	w.mu.Unlock()
	go w.work(&worker{next: make(chan func(), 1)}, fn)
}

func (w *workers) work(wk *worker, fn func()) {
	defer w.wg.Done()
	for fn != nil {
		fn()
		if !w.park(wk) {
			return
		}
		fn = <-wk.next
	}
}

// park puts wk on the idle stack, unless the pool is closing.
func (w *workers) park(wk *worker) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return false
	}
	wk.epoch = w.epoch
	w.idle = append(w.idle, wk)
	if !w.armed {
		w.armed = true
		w.sweep.Reset(workerIdle)
	}
	return true
}

// retire ends the workers that were already idle at the previous sweep.
// They are at the bottom of the stack, since a worker that runs a task
// goes back on top.
func (w *workers) retire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing {
		return
	}
	n := 0
	for n < len(w.idle) && w.idle[n].epoch < w.epoch {
		w.idle[n].next <- nil
		n++
	}
	k := copy(w.idle, w.idle[n:])
	clear(w.idle[k:])
	w.idle = w.idle[:k]
	w.epoch++
	w.armed = len(w.idle) > 0
	if w.armed {
		w.sweep.Reset(workerIdle)
	}
}

// close ends the idle workers and waits for every worker to end. No task
// may be handed in after it.
func (w *workers) close() {
	w.mu.Lock()
	w.closing = true
	w.sweep.Stop()
	for _, wk := range w.idle {
		wk.next <- nil
	}
	w.idle = nil
	w.mu.Unlock()
	w.wg.Wait()
}
