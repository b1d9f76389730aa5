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

// A worker left idle ends by itself (within two workerIdle periods), so
// an idle relay holds no worker; one kept busy is not ended.
func TestWorkersRetireWhenIdle(t *testing.T) {
	w := newWorkers()
	defer w.close()
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	ended := make(chan struct{})
	go func() { w.wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(2*workerIdle + 5*time.Second):
		t.Fatal("an idle worker did not end")
	}
	w.mu.Lock()
	idle, armed := len(w.idle), w.armed
	w.mu.Unlock()
	if idle != 0 || armed {
		t.Fatalf("after retiring: %d idle, sweep armed %v", idle, armed)
	}

	// The pool still runs tasks after its workers retired.
	again := make(chan struct{})
	w.run(func() { close(again) })
	<-again
}
