package agent

// Lifecycle edge cases of the agent: shutdown within its grace, and
// duplicate deliveries racing a result's fsync.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// blockExec blocks every request until its context ends.
type blockExec struct{ started chan string }

func (b blockExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	b.started <- r.ID
	<-ctx.Done()
	return nil, ctx.Err()
}

// mutedRelay is a fake relay that welcomes the agent, delivers one request
// after the first pull, and then reads (answering pings) but never acks.
type mutedRelay struct {
	ts   *httptest.Server
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []*websocket.Conn
}

func startMutedRelay(t *testing.T) *mutedRelay {
	t.Helper()
	m := &mutedRelay{}
	up := websocket.Upgrader{Subprotocols: []string{protocol.Version}}
	m.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		m.mu.Lock()
		m.conn = append(m.conn, c)
		m.mu.Unlock()
		m.wg.Add(1)
		defer m.wg.Done()
		if _, _, err := c.ReadMessage(); err != nil { // hello
			return
		}
		send := func(msg protocol.Message) {
			b, _ := protocol.Encode(msg)
			c.WriteMessage(websocket.TextMessage, b)
		}
		// A long ping period: the agent will not drop the link on its own
		// for 2.5 minutes.
		send(&protocol.Welcome{Session: "s1", Device: "d1", Relay: "fake", MaxFrame: protocol.MaxFrame, PingMs: 60000})
		sent := false
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			msg, err := protocol.Decode(b, protocol.MaxFrame)
			if err != nil {
				return
			}
			if _, ok := msg.(*protocol.Pull); ok && !sent {
				sent = true
				send(&protocol.Request{ID: "r1", Method: "m", TimeoutMs: 60000, Attempt: 1})
			}
			// Results are read and never acknowledged.
		}
	}))
	t.Cleanup(func() {
		m.mu.Lock()
		for _, c := range m.conn {
			c.Close()
		}
		m.mu.Unlock()
		m.ts.Close()
	})
	return m
}

// Run must stay within ShutdownGrace even when handlers overrun it and the
// relay never acknowledges: the outbox flush gets what is left of the
// grace, not a fresh wait that only a dying link would end.
func TestRunHonoursShutdownGraceWhenHandlersOverrun(t *testing.T) {
	m := startMutedRelay(t)
	ex := blockExec{started: make(chan string, 1)}
	a, err := New(Config{
		Relay:         "ws" + strings.TrimPrefix(m.ts.URL, "http"),
		Token:         "t",
		ShutdownGrace: 200 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, ex)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	select {
	case <-ex.started:
	case <-time.After(5 * time.Second):
		t.Fatal("request never started")
	}
	start := time.Now()
	cancel()
	select {
	case <-ran:
		t.Logf("Run returned after %v", time.Since(start))
	case <-time.After(3 * time.Second):
		// Unblock Run so the test ends: dropping the link makes sess nil.
		m.mu.Lock()
		for _, c := range m.conn {
			c.Close()
		}
		m.mu.Unlock()
		<-ran
		t.Fatalf("Run with ShutdownGrace 200ms was still running %v after its context ended (relay connected, not acking)", time.Since(start).Round(time.Millisecond))
	}
}

// A duplicate delivery that arrives while the original result is still
// being journaled must not be answered yet: a result reaches the relay only
// once it is on the agent's disk.
func TestDuplicateAnsweredOnlyFromDurableResult(t *testing.T) {
	a, s := attachedAgent(t, t.TempDir(), echoExec{})

	// Hold every journal flush, as a slow fsync would.
	a.j.mu.Lock()
	a.j.flushing = true
	a.j.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		a.finish(&protocol.Result{ID: "r1", State: protocol.StateSucceeded, Value: json.RawMessage(`{}`)})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		_, ok := a.out.finished("r1")
		a.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("finish did not record the result")
		}
		time.Sleep(time.Millisecond)
	}

	a.onRequest(s, &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 1000, Attempt: 2})
	a.j.mu.Lock()
	durable, appended := a.j.durable, a.j.appended
	a.j.mu.Unlock()
	for len(s.out) > 0 {
		m, err := protocol.Decode(<-s.out, protocol.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := m.(*protocol.Result); ok && r.ID == "r1" && durable < appended {
			t.Errorf("result r1 sent to the relay before it was journaled (durable %d < appended %d)", durable, appended)
		}
	}

	a.j.mu.Lock()
	a.j.flushing = false
	a.j.cond.Broadcast()
	a.j.mu.Unlock()
	<-finished
}

// pureExec answers every method without touching hardware.
type pureExec struct{ echoExec }

func (pureExec) Pure(string) bool { return true }

// A pure request leaves no trace in the journal: not its start, not its
// result, and not the relay's ack of it, which would otherwise pile up
// waiting for an fsync that pure traffic never makes.
func TestPureRequestNotJournaled(t *testing.T) {
	a, s := attachedAgent(t, t.TempDir(), pureExec{})
	a.j.mu.Lock()
	before := a.j.appended
	a.j.mu.Unlock()

	a.onRequest(s, &protocol.Request{ID: "p1", Method: "sys.ping", TimeoutMs: 1000, Attempt: 1})
	timeout, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !a.waitFor(timeout.Done(), func() bool { return len(a.running) == 0 }) {
		t.Fatal("p1 did not finish")
	}
	a.onAck(&protocol.Ack{IDs: []string{"p1"}})
	// The relay acks every copy of a result it commits; a second ack of a
	// forgotten pure request is no more journaled than the first.
	a.onAck(&protocol.Ack{IDs: []string{"p1"}})
	a.jobs.Wait()

	a.j.mu.Lock()
	after := a.j.appended
	a.j.mu.Unlock()
	if after != before {
		t.Errorf("journal grew by %d bytes for a pure request", after-before)
	}
	a.mu.Lock()
	recs := a.snapshotLocked()
	a.mu.Unlock()
	for _, r := range recs {
		if r.ID == "p1" {
			t.Errorf("snapshot holds %s record of a pure request", r.Op)
		}
	}
	var sawResult bool
	for len(s.out) > 0 {
		m, err := protocol.Decode(<-s.out, protocol.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := m.(*protocol.Result); ok && r.ID == "p1" {
			sawResult = true
		}
	}
	if !sawResult {
		t.Error("result of p1 not sent")
	}
}

// instantExec answers every method at once, without touching hardware.
type instantExec struct{ pureExec }

func (instantExec) Instant(string) bool { return true }

// A pure, instant request is answered before onRequest returns: it runs
// on the reader's goroutine, not one started for it.
func TestInstantRequestRunsOnReader(t *testing.T) {
	a, s := attachedAgent(t, "", instantExec{})

	a.onRequest(s, &protocol.Request{ID: "i1", Method: "sys.ping", TimeoutMs: 1000, Attempt: 1})
	if st := a.Status(); st.Running != 0 {
		t.Errorf("%d requests still running after onRequest returned", st.Running)
	}
	var types []string
	for len(s.out) > 0 {
		m, err := protocol.Decode(<-s.out, protocol.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, m.MsgType())
	}
	if strings.Join(types, ",") != "result,pull" {
		t.Errorf("sent %v after onRequest, want the result and a new credit", types)
	}
}

// attachedAgent returns an agent (journaled in stateDir, if set) attached
// to a session with no connection behind it, its first pull already
// taken from the session's queue. The agent is closed when t ends.
func attachedAgent(t testing.TB, stateDir string, exec Executor) (*Agent, *session) {
	t.Helper()
	a, s := detachedAgent(t, stateDir, exec)
	a.attach(s, 0)
	<-s.out // the pull
	return a, s
}

// detachedAgent is attachedAgent before the attach.
func detachedAgent(t testing.TB, stateDir string, exec Executor) (*Agent, *session) {
	t.Helper()
	a, err := New(Config{
		Relay:    "ws://127.0.0.1:1",
		Token:    "t",
		StateDir: stateDir,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, exec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, &session{out: make(chan []byte, 64), done: make(chan struct{}), failed: make(chan struct{})}
}

// sentEventSeqs takes every frame s holds and returns the seqs of the
// events among them.
func sentEventSeqs(t *testing.T, s *session) []uint64 {
	t.Helper()
	var seqs []uint64
	for len(s.out) > 0 {
		if ev, ok := decodeSent(t, <-s.out).(*protocol.Event); ok {
			seqs = append(seqs, ev.Seq)
		}
	}
	return seqs
}
