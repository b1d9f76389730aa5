package relay

import (
	"sync"
	"time"
)

// workerIdle is how long a worker waits for its next task before it ends.
const workerIdle = time.Second

// workers runs a loop's short tasks, read turns and writer runs, on
// goroutines that outlive one task. A goroutine started per task begins
// with a small stack and grows it, by copying, through the JSON decoding
// of every frame: under load that was 6% of the relay's CPU. A worker
// keeps its grown stack for the next task, and ends after workerIdle
// without one, so idle sessions still hold no goroutine.
type workers struct {
	next chan func() // unbuffered: a send succeeds only to a waiting worker
	quit chan struct{}
	wg   sync.WaitGroup
}

func newWorkers() *workers {
	return &workers{next: make(chan func()), quit: make(chan struct{})}
}

// run runs fn on an idle worker, or on a new one.
func (w *workers) run(fn func()) {
	select {
	case w.next <- fn:
	default:
		w.wg.Add(1)
		go w.work(fn)
	}
}

func (w *workers) work(fn func()) {
	defer w.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		fn()
		idle.Reset(workerIdle)
		select {
		case fn = <-w.next:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}

// close ends the idle workers and waits for every worker to end. No task
// may be handed in after it.
func (w *workers) close() {
	close(w.quit)
	w.wg.Wait()
}
