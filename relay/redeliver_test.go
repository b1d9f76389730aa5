package relay

import (
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// A request that went back to the queue after a delivery may have run on
// the device: its deadline passing must not make it expired (which says it
// never started). It is delivered again so the agent can answer from its
// journal, here with the result of the run the first session lost.
func TestRedeliveredRequestIsNotExpiredPastDeadline(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(150 * time.Millisecond)})
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != rec.ID {
		t.Fatalf("delivered %s", req.ID)
	}
	// The session dies with the result unsent; the deadline passes while
	// the device is away.
	a.close()
	waitFor(t, "device offline", func() bool { return !e.device("dev1").Online })
	time.Sleep(300 * time.Millisecond)
	if got := e.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Fatalf("delivered request past its deadline: %s %v, want still queued", got.State, got.Error)
	}

	b := dialAgent(e, e.token)
	b.send(&protocol.Pull{N: 1})
	req := nextAs[*protocol.Request](b)
	if req.ID != rec.ID || req.Attempt != 2 {
		t.Fatalf("redelivered %s attempt %d", req.ID, req.Attempt)
	}
	b.succeed(rec.ID, `{"ran":"once"}`)
	if got := e.record(rec.ID, ""); got.State != protocol.StateSucceeded {
		t.Fatalf("after the journal's answer: %+v", got)
	}
}

// Never delivered, a request past its deadline still expires.
func TestNeverDeliveredRequestExpires(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(50 * time.Millisecond)})
	if got := e.record(rec.ID, "5s"); got.State != protocol.StateExpired {
		t.Fatalf("record %+v", got)
	}
}
