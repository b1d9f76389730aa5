package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Events emitted at once, whose journal syncs end in any order, reach
// the session in seq order, every one of them: the relay ignores an event
// at or below the last seq it stored, so one sent late would be lost.
func TestConcurrentEventsSentInOrder(t *testing.T) {
	for trial := range 30 {
		dir := ""
		if trial%2 == 1 {
			dir = t.TempDir()
		}
		a, s := attachedAgent(t, dir, &countingExec{})
		const n = 8
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if err := a.Emit("e", json.RawMessage(`1`)); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		var last uint64
		for range n {
			ev, ok := decodeSent(t, <-s.out).(*protocol.Event)
			if !ok || ev.Seq != last+1 {
				t.Fatalf("trial %d: after seq %d got %+v", trial, last, ev)
			}
			last = ev.Seq
		}
	}
}

func decodeSent(t *testing.T, b []byte) protocol.Message {
	t.Helper()
	m, err := protocol.Decode(b, protocol.MaxFrame)
	if err != nil {
		t.Fatalf("the relay would refuse %s: %v", b, err)
	}
	return m
}

type outputExec struct {
	val json.RawMessage
	err error
}

func (e outputExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	return e.val, e.err
}

// What a handler returns is checked as the relay checks a result: a value
// that is not JSON, or a failure without a code, would make a frame the
// relay refuses at every resend. Both become failures with code internal.
func TestHandlerOutputChecked(t *testing.T) {
	for _, tt := range []struct {
		name string
		exec outputExec
	}{
		{"value not JSON", outputExec{val: json.RawMessage(`{oops`)}},
		{"failure without a code", outputExec{err: &protocol.Failure{Message: "no code"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, tt.exec)
			if err != nil {
				t.Fatal(err)
			}
			res := a.execute(context.Background(), &job{req: &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 1000, Attempt: 1}})
			b, _ := protocol.Encode(res)
			decodeSent(t, b)
			if res.State != protocol.StateFailed || res.Error.Code != protocol.CodeInternal {
				t.Fatalf("result %s", b)
			}
		})
	}
}

// canceledDuringRun is a handler that completes its action while the
// relay's cancel arrives, and returns its value.
type canceledDuringRun struct{ j **job }

func (e canceledDuringRun) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	(*e.j).canceled.Store(true)
	return json.RawMessage(`{"read":"beef"}`), nil
}

// A handler that returns a value has done its action: a cancel that came
// meanwhile does not turn its result into canceled.
func TestCancelAfterTheActionIsASuccess(t *testing.T) {
	var j *job
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, canceledDuringRun{&j})
	if err != nil {
		t.Fatal(err)
	}
	j = &job{req: &protocol.Request{ID: "r1", Method: "i2c.tx", TimeoutMs: 1000, Attempt: 1}}
	if res := a.execute(context.Background(), j); res.State != protocol.StateSucceeded || string(res.Value) != `{"read":"beef"}` {
		t.Fatalf("result %s %+v", res.State, res.Error)
	}
}

// A device that only sends events compacts its journal too: acked events
// leave nothing owed, and the file stays near the compaction threshold.
func TestEventsOnlyJournalCompacts(t *testing.T) {
	const compactAt = 64 << 10
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t", StateDir: t.TempDir(), CompactBytes: compactAt,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, &countingExec{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := range 5000 { // ~800 KB of records without compaction
		if err := a.Emit("gpio.edge", json.RawMessage(`{"pin":"GPIO27","level":"high","edge":"rising"}`)); err != nil {
			t.Fatal(err)
		}
		a.onAck(&protocol.Ack{Events: uint64(i + 1)})
	}
	a.j.sync()
	a.compactions.Wait()
	// Events added while the last compaction ran were carried into its
	// file; the next event compacts them away, however many they were.
	a.Emit("gpio.edge", json.RawMessage(`{}`))
	a.onAck(&protocol.Ack{Events: 5001})
	a.j.sync()
	a.compactions.Wait()
	if n := a.j.fileSize(); n > 4*compactAt {
		t.Errorf("journal of %d bytes with nothing owed (compaction at %d)", n, compactAt)
	}
}

// A result not yet on disk when a session starts is listed as running in
// its hello: it is sent only once durable, perhaps after the session's
// first credits, and the relay must not conclude meanwhile that the agent
// does not have the request.
func TestHelloListsResultsOnTheirWayToDisk(t *testing.T) {
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, &countingExec{})
	if err != nil {
		t.Fatal(err)
	}
	a.out.addResult(&protocol.Result{ID: "r-syncing", State: protocol.StateSucceeded, Value: json.RawMessage(`1`)}, time.Now(), false)
	a.out.addResult(&protocol.Result{ID: "r-synced", State: protocol.StateSucceeded, Value: json.RawMessage(`1`)}, time.Now(), false)
	a.out.markResultDurable("r-synced")
	if got := a.hello().Running; len(got) != 1 || got[0] != "r-syncing" {
		t.Fatalf("hello.running %v", got)
	}
}
