package relay

import (
	"testing"

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
