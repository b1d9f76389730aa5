package agent

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

func TestOutboxAckAndDedupe(t *testing.T) {
	o := newOutbox(3, time.Hour)
	now := time.Now()
	for i := 1; i <= 5; i++ {
		o.addResult(&protocol.Result{ID: fmt.Sprint("r", i), State: protocol.StateSucceeded}, now, false)
	}
	// Unacknowledged results are never forgotten, even over the count.
	if _, ok := o.finished("r1"); !ok || len(o.results) != 5 {
		t.Fatalf("unacked result evicted: %d results", len(o.results))
	}
	o.ack([]string{"r1", "r2", "r4"}, 0)
	if len(o.results) != 2 || o.results[0].res.ID != "r3" || o.results[1].res.ID != "r5" {
		t.Fatalf("after ack: %+v", o.results)
	}
	o.addResult(&protocol.Result{ID: "r6", State: protocol.StateSucceeded}, now, false)
	// r1, r2 are acked and over the count bound; r3 is not acked, so
	// eviction stops there (it keeps finishing order).
	if _, ok := o.finished("r1"); ok {
		t.Fatal("r1 still remembered beyond the count bound")
	}
	if _, ok := o.finished("r3"); !ok {
		t.Fatal("unacked r3 forgotten")
	}
	// Age bound.
	o.ack([]string{"r3", "r5", "r6"}, 0)
	o.evict(now.Add(2 * time.Hour))
	if len(o.done) != 0 {
		t.Fatalf("old entries kept: %d", len(o.done))
	}
}

// Over a long run the outbox keeps exactly the newest maxDone finished
// requests, in order, and its order slice does not grow with the run.
func TestOutboxEvictsInOrder(t *testing.T) {
	const keep = 100
	o := newOutbox(keep, time.Hour)
	now := time.Now()
	for i := range 50 * keep {
		id := fmt.Sprint("r", i)
		o.addResult(&protocol.Result{ID: id, State: protocol.StateSucceeded}, now, false)
		o.ack([]string{id}, 0)
	}
	order := o.finishedOrder()
	if len(o.done) != keep || len(order) != keep {
		t.Fatalf("kept %d finished requests (%d in order), want %d", len(o.done), len(order), keep)
	}
	for i, id := range order {
		if want := fmt.Sprint("r", 49*keep+i); id != want {
			t.Fatalf("order[%d] = %s, want %s", i, id, want)
		}
		if _, ok := o.finished(id); !ok {
			t.Fatalf("%s in order but not remembered", id)
		}
	}
	if cap(o.doneOrder) > 4*keep {
		t.Fatalf("order slice grew to %d for %d entries", cap(o.doneOrder), keep)
	}
}

func TestOutboxEvents(t *testing.T) {
	o := newOutbox(10, time.Hour)
	for i := 0; i < 4; i++ {
		ev, _ := o.addEvent("gpio.edge", nil, time.Now(), false)
		if ev.Seq != uint64(i+1) {
			t.Fatalf("seq %d, want %d", ev.Seq, i+1)
		}
	}
	o.ack(nil, 2)
	if len(o.events) != 2 || o.events[0].ev.Seq != 3 {
		t.Fatalf("after ack 2: %+v", o.events)
	}
	o.ack(nil, 10)
	if o.size() != 0 {
		t.Fatalf("size %d after acking all", o.size())
	}
}

// A pure request's result answers a duplicate delivery until the relay
// acknowledges it, and is forgotten then: it never fills the dedupe
// window that hardware actions need.
func TestOutboxForgetsAckedPureResults(t *testing.T) {
	o := newOutbox(10, time.Hour)
	now := time.Now()
	o.addResult(&protocol.Result{ID: "ping", State: protocol.StateSucceeded}, now, true)
	o.addResult(&protocol.Result{ID: "write", State: protocol.StateSucceeded}, now, false)
	if _, ok := o.finished("ping"); !ok || o.journaled("ping") {
		t.Fatal("unacked pure result not remembered, or taken as journaled")
	}
	o.ack([]string{"ping", "write"}, 0)
	if _, ok := o.finished("ping"); ok {
		t.Fatal("acked pure result still remembered")
	}
	if _, ok := o.finished("write"); !ok {
		t.Fatal("acked hardware result forgotten inside the dedupe window")
	}
	if order := o.finishedOrder(); len(order) != 1 || order[0] != "write" {
		t.Fatalf("finished order %v", order)
	}
	// Pure traffic alone leaves nothing behind once acknowledged.
	for i := range 1000 {
		id := fmt.Sprint("p", i)
		o.addResult(&protocol.Result{ID: id, State: protocol.StateSucceeded}, now, true)
		o.ack([]string{id}, 0)
	}
	if len(o.done) != 1 || len(o.finishedOrder()) != 1 || len(o.results) != 0 {
		t.Fatalf("after 1,000 acked pings: %d remembered, %d in order, %d owed", len(o.done), len(o.finishedOrder()), len(o.results))
	}
}

// An agent without a journal numbers its events from 1 at every start;
// at its first welcome it moves them, none sent yet, above the last seq
// the relay has from the device, which would ignore them otherwise. So
// does an agent whose journal lags the relay (here a new one: a lost state
// directory), once the moved events' records are on disk; a restart then
// recovers them under their new seqs only. A later welcome of the same
// process moves nothing.
func TestEventsNumberedAboveTheRelaysAfterARestart(t *testing.T) {
	a, s := detachedAgent(t, "", &countingExec{})
	if err := a.Emit("before", nil); err != nil {
		t.Fatal(err)
	}
	a.attach(s, 41)
	if err := a.Emit("after", nil); err != nil {
		t.Fatal(err)
	}
	if got := sentEventSeqs(t, s); !slices.Equal(got, []uint64{42, 43}) {
		t.Fatalf("without a journal, after a welcome with last_event 41: sent %v, want [42 43]", got)
	}
	a.detach(s)
	a.attach(s, 100) // a later session of the same process
	if got := sentEventSeqs(t, s); !slices.Equal(got, []uint64{42, 43}) {
		t.Fatalf("a second welcome renumbered: resent %v, want [42 43]", got)
	}

	dir := t.TempDir()
	j, sj := detachedAgent(t, dir, &countingExec{})
	for _, name := range []string{"first", "second"} {
		if err := j.Emit(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	j.attach(sj, 41)
	var got []uint64
	waitUntil(t, "the moved events", func() bool {
		got = append(got, sentEventSeqs(t, sj)...)
		return len(got) >= 2
	})
	if !slices.Equal(got, []uint64{42, 43}) {
		t.Fatalf("with a journal that lags the relay: sent %v, want [42 43]", got)
	}
	j.Close()
	k, sk := detachedAgent(t, dir, &countingExec{})
	k.attach(sk, 41) // the relay did not get them
	if got := sentEventSeqs(t, sk); !slices.Equal(got, []uint64{42, 43}) {
		t.Fatalf("after a restart: resent %v, want [42 43] (their old seqs not recovered)", got)
	}
}

// An ack from a relay whose numbering is ahead (the journal lost records
// it had acked) moves the next seq above it.
func TestAckAheadMovesNumbering(t *testing.T) {
	o := newOutbox(10, time.Hour)
	o.addEvent("e", nil, time.Now(), false) // seq 1
	o.ack(nil, 9)
	if len(o.events) != 0 || o.nextSeq != 10 {
		t.Fatalf("after ack 9: events %+v, next seq %d, want none and 10", o.events, o.nextSeq)
	}
	o.ack(nil, 3) // an older ack moves nothing back
	if o.nextSeq != 10 {
		t.Fatalf("after ack 3: next seq %d", o.nextSeq)
	}
}

// The first welcome renumbers the events the process made. An Emit
// running meanwhile marks its event ready by a key the renumbering keeps,
// so a renumbering cannot leave it unmarked, which would hold back every
// later event for good.
func TestEmitDuringFirstAttach(t *testing.T) {
	for i := 0; i < 2000; i++ {
		dir := ""
		if i%20 == 0 { // with a journal too: its Emits sync, so fewer rounds
			dir = t.TempDir()
		}
		a, s := detachedAgent(t, dir, echoExec{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 4 {
				if err := a.Emit("e", nil); err != nil {
					t.Error(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			a.attach(s, 1000)
		}()
		wg.Wait()
		a.compactions.Wait() // the renumbered events' records, with a journal
		a.mu.Lock()
		stuck := -1
		for k, pe := range a.out.events {
			if !pe.durable || !pe.sent {
				stuck = k
				break
			}
		}
		evs := append([]pendingEvent(nil), a.out.events...)
		a.mu.Unlock()
		if stuck >= 0 {
			t.Fatalf("iteration %d: event %d of %d never sent (durable %v); all after it are held: %+v", i, stuck, len(evs), evs[stuck].durable, evs)
		}
		a.Close()
	}
}

// An event still owed when the agent restarts keeps its age (the relay
// stamps it receipt time less age): the journal records when it happened
// on the wall clock. A time the clock cannot vouch for (in the future, or
// older than trustedEventAge: a board without a real-time clock set by
// NTP in between) counts as now.
func TestEventAgeSurvivesARestart(t *testing.T) {
	dir := t.TempDir()
	a, _ := detachedAgent(t, dir, &countingExec{})
	if err := a.Emit("door", nil); err != nil {
		t.Fatal(err)
	}
	a.Close()
	now := time.Now()
	for _, tc := range []struct {
		ms       int64
		min, max time.Duration
	}{
		{now.Add(-5 * time.Second).UnixMilli(), 5 * time.Second, 6 * time.Second},
		{now.Add(time.Hour).UnixMilli(), 0, time.Second},
		{now.Add(-2 * trustedEventAge).UnixMilli(), 0, time.Second},
		{0, 0, time.Second},
	} {
		if age := now.Sub(madeAt(now, tc.ms)); age < tc.min || age > tc.max {
			t.Errorf("made at %d: age %v, want %v..%v", tc.ms, age, tc.min, tc.max)
		}
	}
	time.Sleep(1100 * time.Millisecond) // a restart that takes a while
	b, s := detachedAgent(t, dir, &countingExec{})
	b.attach(s, 0)
	var ev *protocol.Event
	waitUntil(t, "the event sent", func() bool {
		for len(s.out) > 0 && ev == nil {
			ev, _ = decodeSent(t, <-s.out).(*protocol.Event)
		}
		return ev != nil
	})
	if ev.Name != "door" || ev.AgeMs < 1000 {
		t.Fatalf("after a restart: sent %+v, want door with an age of at least 1 s", ev)
	}
}
