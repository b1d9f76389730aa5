package relay

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tetherhq/tether/protocol"
)

func TestRestartKeepsQueue(t *testing.T) {
	e := newEnv(t)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, e.submit(protocol.Submit{Method: "m"}).ID)
	}
	done := e.submit(protocol.Submit{Method: "m"})
	e.do("DELETE", "/v1/requests/"+done.ID, nil)

	// Deliver the second one only, so the order on restart is observable.
	if rec := e.record(ids[0], ""); rec.State != protocol.StateQueued {
		t.Fatal(rec.State)
	}
	e.do("DELETE", "/v1/requests/"+ids[0], nil)
	ids = ids[1:]
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != ids[0] {
		t.Fatalf("delivered %s", req.ID)
	}
	third := e.submit(protocol.Submit{Method: "m"}).ID
	ids = append(ids, third)

	e.restart()
	a.closed()

	if got := e.record(done.ID, ""); got.State != protocol.StateCanceled {
		t.Fatalf("finished request after restart: %+v", got)
	}
	if d := e.device("dev1"); d.Queued != 3 || d.Online || d.Agent != "test/1" {
		t.Fatalf("device after restart %+v", d)
	}
	b := dialAgent(e, e.token)
	b.send(&protocol.Pull{N: 10})
	for i, want := range ids {
		req := nextAs[*protocol.Request](b)
		wantAttempt := 1
		if i == 0 {
			wantAttempt = 2 // it was delivered before the restart
		}
		if req.ID != want || req.Attempt != wantAttempt {
			t.Fatalf("delivery %d: %s attempt %d, want %s attempt %d", i, req.ID, req.Attempt, want, wantAttempt)
		}
	}
}

func TestRestartKeepsEventsAndDedup(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	a.send(&protocol.Event{Seq: 7, Name: "x"})
	nextAs[*protocol.Ack](a)
	e.restart()
	a.closed()
	b := dialAgent(e, e.token)
	b.send(&protocol.Event{Seq: 7, Name: "again"})
	if ack := nextAs[*protocol.Ack](b); ack.Events != 7 {
		t.Fatalf("ack %+v", ack)
	}
	evs, err := e.srv.Events("dev1", 0, 10)
	if err != nil || len(evs) != 1 || evs[0].Name != "x" {
		t.Fatalf("events %+v err %v", evs, err)
	}
}

// markUnclean makes the store in dir look like a relay crashed on it: the
// mark a running relay keeps in it is there.
func markUnclean(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "relay.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyOpen, []byte{1}) }); err != nil {
		t.Fatal(err)
	}
}

// Deliveries are committed behind their frames, so after a crash a request
// may be back in the queue as never delivered although an agent ran it.
// Such a request must not be expired (the client would hear it never ran):
// it waits for an agent past its deadline like a redelivered one. After a
// clean stop, the same request expires as usual.
func TestUncleanRestartNeverExpiresWhatMayHaveRun(t *testing.T) {
	for _, crashed := range []bool{false, true} {
		e := newEnv(t)
		rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(30 * time.Millisecond)})
		e.stop()
		if crashed {
			markUnclean(t, e.cfg.DataDir)
		}
		e.start()
		if !crashed {
			waitFor(t, "expiry", func() bool { return e.record(rec.ID, "").State == protocol.StateExpired })
			continue
		}
		time.Sleep(300 * time.Millisecond) // ten times the deadline, sixty sweeps
		if got := e.record(rec.ID, "").State; got != protocol.StateQueued {
			t.Fatalf("after a crash: %s, want queued until an agent answers or the grace ends", got)
		}
		// Redelivered, the agent answers from its journal.
		a := dialAgent(e, e.token)
		a.send(&protocol.Pull{N: 1})
		req := nextAs[*protocol.Request](a)
		a.send(&protocol.Result{ID: req.ID, State: protocol.StateSucceeded, Value: json.RawMessage(`{}`)})
		nextAs[*protocol.Ack](a)
		if got := e.record(rec.ID, "").State; got != protocol.StateSucceeded {
			t.Fatalf("after the agent answered: %s", got)
		}
	}
}

// After a crash every recovered request counts as possibly run
// (entry.maybeRan): its delivery may have been lost with the crash. That
// is stored with it, so that a clean restart after the crash, which finds
// the store clean, still does not expire the request ("deadline passed
// while queued") although its agent may have run it.
func TestCleanRestartAfterCrashExpiresWhatMayHaveRun(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(300 * time.Millisecond)})
	// The relay crashes; say the request's delivery was lost with it.
	e.stop()
	markUnclean(t, e.cfg.DataDir)
	e.start()
	if got := e.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Fatalf("after the crash: %s", got.State)
	}
	// A clean restart (a deploy), while the device is still away.
	e.restart()
	time.Sleep(600 * time.Millisecond) // past the deadline, well within the redelivery grace
	if got := e.record(rec.ID, ""); got.State == protocol.StateExpired {
		t.Fatalf("a request recovered from a crash, so possibly run, was reported %s (%v) after a clean restart", got.State, got.Error)
	}
}

// Nor does it cancel such a request at once, with its device away, as
// "canceled by a client before delivery": a cancel of a request that may
// have run waits for the device's next session (SPEC §6, Cancellation).
func TestCleanRestartAfterCrashCancelsWhatMayHaveRun(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(5 * time.Second)})
	e.stop()
	markUnclean(t, e.cfg.DataDir)
	e.start()
	e.restart()
	st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil)
	if got := decode[protocol.Record](t, body); st == 200 && got.State == protocol.StateCanceled {
		t.Fatalf("a request recovered from a crash, so possibly run, was canceled at once with its device away: %v", got.Error)
	}
}

// A cancel asked for a request that may have run (delivered once, its
// device now away) is stored with the request (cancel_asked). After a
// crash, newHub rewrites every recovered request to mark it maybe_ran; the
// rewrite keeps cancel_asked, so a later restart does not deliver the
// request again as if nobody had asked (SPEC §6, Cancellation).
func TestCrashMarkKeepsCancelAsked(t *testing.T) {
	e := newEnv(t)
	a, rec := deliveredRequest(e)
	a.close()
	waitFor(t, "requeue", func() bool { return e.record(rec.ID, "").State == protocol.StateQueued })
	// The device is away and the request may have run: the cancel waits.
	if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != 200 && st != 202 {
		t.Fatalf("cancel: %d %s", st, body)
	}
	if got := e.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Fatalf("after the cancel: %s, want queued until the device says", got.State)
	}
	e.crash()   // unclean start: newHub marks and rewrites the request
	e.restart() // a clean restart later
	b := dialAgent(e, e.token)
	b.send(&protocol.Pull{N: 1})
	waitFor(t, "the cancel resolved or the request delivered", func() bool {
		return e.record(rec.ID, "").State != protocol.StateQueued
	})
	if got := e.record(rec.ID, ""); got.State != protocol.StateCanceled {
		t.Fatalf("request canceled by its client before the crash is %s (attempt %d) after a crash and a clean restart: delivered again as if nobody had asked", got.State, got.Attempts)
	}
	b.quiet(100 * time.Millisecond)
}
