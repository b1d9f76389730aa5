package relay

import (
	"sync"
	"testing"
	"time"
)

// Tasks never wait for a busy worker: each one that finds none idle gets
// a new one. close waits for the tasks, and ends the idle workers.
func TestWorkersNeverQueue(t *testing.T) {
	w := newWorkers()
	release := make(chan struct{})
	var started sync.WaitGroup
	const n = 8
	started.Add(n)
	for range n {
		w.run(func() {
			started.Done()
			<-release // all n must run at once for this to return
		})
	}
	done := make(chan struct{})
	go func() { started.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("tasks waited for busy workers")
	}
	close(release)

	// An idle worker takes the next task.
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	w.close() // returns once every worker has ended (goleak checks the rest)
}
