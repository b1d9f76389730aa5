package relay

import (
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// helloAs connects an agent of instance inst (its state directory) and
// reads the welcome.
func helloAs(e *env, inst string) *testAgent {
	e.t.Helper()
	a := connect(e, e.token)
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock", Methods: []string{"m"}, Instance: inst})
	if _, ok := a.next().(*protocol.Welcome); !ok {
		e.t.Fatal("first frame is not welcome")
	}
	return a
}

// A device that comes back as another agent instance (a new state
// directory, another agent holding its token) cannot answer for what the
// old one ran: the requests that may have run there end interrupted
// instead of being delivered again, unless they are idempotent. The same
// instance coming back gets them again, as its journal answers for them;
// so does an agent that names no instance (older than instances).
func TestAnotherInstanceDoesNotRerun(t *testing.T) {
	for _, tc := range []struct {
		name, first, second string
		rerun               bool
	}{
		{"another instance", "A", "B", false},
		{"the same instance", "A", "A", true},
		{"an agent older than instances", "", "B", true},
		{"back to an older agent", "A", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := helloAs(e, tc.first)
			a.send(&protocol.Pull{N: 2})
			plain := e.submit(protocol.Submit{Method: "m"})
			idem := e.submit(protocol.Submit{Method: "m", Idempotent: true})
			nextAs[*protocol.Request](a)
			nextAs[*protocol.Request](a)
			a.close()
			waitFor(t, "the session to end", func() bool { return !e.device("dev1").Online })
			queued := e.submit(protocol.Submit{Method: "m"}) // never delivered

			b := helloAs(e, tc.second)
			b.send(&protocol.Pull{N: 3})
			got := map[string]bool{}
			want := 2
			if tc.rerun {
				want = 3
			}
			for range want {
				got[nextAs[*protocol.Request](b).ID] = true
			}
			if !got[idem.ID] || !got[queued.ID] || got[plain.ID] != tc.rerun {
				t.Fatalf("delivered %v; want the idempotent and the undelivered ones, and the other one only if rerun=%v", got, tc.rerun)
			}
			if !tc.rerun {
				rec := e.record(plain.ID, "")
				if rec.State != protocol.StateFailed || rec.Error == nil || rec.Error.Code != protocol.CodeInterrupted {
					t.Fatalf("request delivered to the old instance: %s %+v, want failed interrupted", rec.State, rec.Error)
				}
			}
		})
	}
}

// A request a client asked to cancel while another agent instance may
// have run it ends canceled, saying so, as the sweep would end it.
func TestAnotherInstanceEndsAskedCancelCanceled(t *testing.T) {
	e := newEnv(t)
	a := helloAs(e, "A")
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "m"})
	nextAs[*protocol.Request](a)
	if code, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); code != 202 {
		t.Fatalf("cancel of a delivered request: %d %s", code, body)
	}
	a.close()
	waitFor(t, "the session to end", func() bool { return !e.device("dev1").Online })
	helloAs(e, "B")
	got := e.record(rec.ID, "")
	if got.State != protocol.StateCanceled || got.Error == nil || !strings.Contains(got.Error.Message, "may have run") {
		t.Fatalf("asked to cancel, then another instance: %s %+v", got.State, got.Error)
	}
}
