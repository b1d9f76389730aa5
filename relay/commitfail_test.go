package relay

// Durability under a failing or slow store: nothing is acknowledged before
// its commit, and a failed commit is retried rather than forgotten.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tetherhq/tether/protocol"
)

// breakCommits makes every later store commit fail (as a full disk or an
// I/O error would) until the returned function is called: bbolt's, and
// the request log's, whose file and directory are swapped for a closed
// file and a missing directory, so its checkpointer cannot mend it. Reads
// keep working. Call both only while no commit is in flight.
func breakCommits(t *testing.T, st *store) (restore func()) {
	t.Helper()
	dead, err := bolt.Open(filepath.Join(t.TempDir(), "dead.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	dead.Close() // Update on a closed DB fails with ErrDatabaseNotOpen
	g := st.commit
	g.mu.Lock()
	realRun := g.run
	g.run = func(group []*commitCall[txFunc]) { runTx(dead, group) }
	g.mu.Unlock()

	closed, err := os.Create(filepath.Join(t.TempDir(), "closed.wal"))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	w := st.reqs
	w.mu.Lock()
	realF, realDir := w.f, w.dir
	w.f, w.dir = closed, filepath.Join(t.TempDir(), "missing")
	w.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.run = realRun
		g.mu.Unlock()
		w.mu.Lock()
		w.f, w.dir, w.sick = realF, realDir, nil
		w.mu.Unlock()
	}
}

// A result whose commit fails is not acknowledged and not forgotten: the
// agent resends it on its next session, the relay commits it then, and the
// request resolves with that result.
func TestResultCommitFailureRetried(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(time.Minute)})
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != rec.ID {
		t.Fatalf("delivered %s", req.ID)
	}

	restore := breakCommits(t, e.srv.st)
	a.send(&protocol.Result{ID: rec.ID, State: protocol.StateSucceeded, Value: json.RawMessage(`{"v":1}`)})
	if f := nextAs[*protocol.Error](a); f.Code != protocol.CodeInternal {
		t.Fatalf("error frame %+v", f)
	}
	a.closed()
	waitFor(t, "device offline", func() bool { return !e.device("dev1").Online })
	time.Sleep(100 * time.Millisecond) // let detach's device write finish
	restore()

	// The agent never got an ack, so it still owes the result and resends
	// it at the start of its next session (SPEC §6 "Results").
	b := dialAgent(e, e.token)
	b.succeed(rec.ID, `{"v":1}`)

	if got := e.record(rec.ID, "1s"); got.State != protocol.StateSucceeded {
		t.Fatalf("after the agent's result was acked the request is %q (attempts %d); the result is lost and the request never resolves",
			got.State, got.Attempts)
	}
}

// An event that one session is still committing is not acknowledged to
// another session resending it (the agent's next session, replacing the
// first): the new session's welcome, which names it, and so the ack of
// the resend, wait for the first commit.
func TestEventNotAckedBeforeCommitAcrossSessions(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)

	// Hold the store's writer: every commit now waits.
	tx, err := e.srv.st.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			tx.Rollback()
		}
	}
	defer release()

	ev := &protocol.Event{Seq: 1, Name: "gpio.edge", Data: json.RawMessage(`{"pin":"GPIO27"}`)}
	a.send(ev) // A's reader takes seq 1 and blocks in its commit
	waitFor(t, "A's event in flight", func() bool {
		h := e.srv.hub
		h.mu.Lock()
		d := h.devices["dev1"]
		h.mu.Unlock()
		if d == nil || d.evMu.TryLock() {
			if d != nil {
				d.evMu.Unlock()
			}
			return false
		}
		return true
	})

	b := connect(e, e.token) // replaces A
	b.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	b.send(ev) // the agent's resend of the same event on its new session
	told := false
	select {
	case f := <-b.frames:
		told = true
		stored, _ := e.srv.st.events("dev1", 0, 10)
		t.Errorf("relay sent %s while %d events are stored: event 1 told of before its commit", f, len(stored))
	case <-time.After(300 * time.Millisecond):
	}
	release()
	if !told {
		if w := nextAs[*protocol.Welcome](b); w.LastEvent != 1 {
			t.Fatalf("welcome: last_event %d, want 1", w.LastEvent)
		}
		if ack := nextAs[*protocol.Ack](b); ack.Events != 1 {
			t.Fatalf("ack %+v", ack)
		}
	}
	waitFor(t, "event stored", func() bool {
		stored, _ := e.srv.st.events("dev1", 0, 10)
		return len(stored) == 1
	})
}

// A cancel whose commit failed is not told as done: the DELETE answers
// 500, and so does every GET or DELETE until the verdict is on disk;
// then they answer canceled, and a relay that stops without a clean
// shutdown finds the request canceled, not queued to run.
func TestCancelToldOnlyOnceStored(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(time.Minute)})
	restore := breakCommits(t, e.srv.st)
	for _, call := range []string{"DELETE", "DELETE", "GET"} {
		if st, body := e.do(call, "/v1/requests/"+rec.ID, nil); st != http.StatusInternalServerError {
			t.Fatalf("%s with the store failing: %d %s", call, st, body)
		}
	}
	if stored, err := e.srv.st.getRequest(rec.ID); err != nil || stored.State != protocol.StateQueued {
		t.Fatalf("on disk: %s, %v", stored.State, err)
	}
	restore()
	if st, body := e.do("GET", "/v1/requests/"+rec.ID, nil); st != 200 || decode[protocol.Record](t, body).State != protocol.StateCanceled {
		t.Fatalf("GET once the store works: %d %s", st, body)
	}
	if stored, err := e.srv.st.getRequest(rec.ID); err != nil || stored.State != protocol.StateCanceled {
		t.Fatalf("on disk: %s, %v", stored.State, err)
	}

	// A crash now: the request must not come back to be run.
	e.crash()
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	a.quiet(100 * time.Millisecond)
	if got := e.record(rec.ID, ""); got.State != protocol.StateCanceled {
		t.Fatalf("after the crash: %s", got.State)
	}
}

// A submit whose commit fails after its request reached the agent (the
// delivery overlaps the commit) is answered with an error that carries
// the request's id, over REST and over /v1/client, so that the client
// follows it instead of submitting it again; its result is recorded once
// the store works again. The request log's commits are held until the
// agent has the request, then fail.
func TestUnstoredSubmitToldItsID(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 2})
	restore := breakCommits(t, e.srv.st)
	// Commits wait for the gate of the moment: a new one, shut, for each
	// submission, opened once the agent has its request.
	var gateMu sync.Mutex
	gate := make(chan struct{})
	shut := func() {
		gateMu.Lock()
		gate = make(chan struct{})
		gateMu.Unlock()
	}
	open := func() {
		gateMu.Lock()
		close(gate)
		gateMu.Unlock()
	}
	g := e.srv.st.reqs.commit
	g.mu.Lock()
	failing := g.run
	g.run = func(group []*commitCall[walOp]) {
		gateMu.Lock()
		wait := gate
		gateMu.Unlock()
		<-wait
		failing(group)
	}
	g.mu.Unlock()

	rest := make(chan []byte, 1)
	go func() {
		st, body := e.do("POST", "/v1/devices/dev1/requests", protocol.Submit{Method: "m"})
		if st != http.StatusInternalServerError {
			body = fmt.Appendf(nil, "status %d: %s", st, body)
		}
		rest <- body
	}()
	first := nextAs[*protocol.Request](a)
	open()
	body := <-rest
	answer := decode[struct {
		Error   protocol.Failure
		Request protocol.Record
	}](t, body)
	if answer.Error.Code != protocol.CodeInternal || answer.Request.ID != first.ID {
		t.Fatalf("REST: %s; the agent has %s", body, first.ID)
	}

	c := dialClient(e)
	shut()
	c.sendJSON(map[string]any{"type": "call", "ref": "c1", "device": "dev1", "method": "m"})
	second := nextAs[*protocol.Request](a)
	open()
	if f := clientNext[*protocol.ClientError](c); f.Ref != "c1" || f.Code != protocol.CodeInternal || f.ID != second.ID {
		t.Fatalf("/v1/client: %+v; the agent has %s", f, second.ID)
	}

	g.mu.Lock()
	g.run = failing
	g.mu.Unlock()
	restore()
	for _, id := range []string{first.ID, second.ID} {
		a.succeed(id, `"ran"`)
		if got := e.record(id, waitLimit.String()); got.State != protocol.StateSucceeded {
			t.Fatalf("%s: %s", id, got.State)
		}
	}
}

// After a relay stops without a clean shutdown, every request it finds
// may have run. A cancel of one of them, queued, waits for its device's
// session to pull (by then it has listed what it runs and sent what it
// kept), and ends canceled then, credits or not; once the session has
// pulled, a cancel ends such a request at once.
func TestCancelMayHaveRunResolvedByThePull(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	var ids []string
	for range 3 {
		ids = append(ids, e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(time.Minute)}).ID)
	}
	e.crash()

	a := dialAgent(e, e.token)
	if st, body := e.do("DELETE", "/v1/requests/"+ids[2], nil); st != http.StatusAccepted {
		t.Fatalf("cancel before the session pulled: %d %s", st, body)
	}
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != ids[0] {
		t.Fatalf("delivered %s, want %s", req.ID, ids[0])
	}
	if got := e.record(ids[2], waitLimit.String()); got.State != protocol.StateCanceled {
		t.Fatalf("asked before the pull: %s", got.State)
	}
	st, body := e.do("DELETE", "/v1/requests/"+ids[1], nil)
	if got := decode[protocol.Record](t, body); st != http.StatusOK || got.State != protocol.StateCanceled {
		t.Fatalf("asked after the pull: %d %s", st, body)
	}
}

// A start that fails (here the request log's directory is a file) leaves a
// cleanly closed store clean: the next start does not take it for a crash,
// after which every queued request would count as possibly run.
func TestFailedStartLeavesStoreClean(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m"}) // queued, never delivered
	e.stop()

	wal := filepath.Join(e.cfg.DataDir, "wal")
	if err := os.Rename(wal, wal+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wal, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if srv, err := New(e.cfg); err == nil {
		srv.Close()
		t.Fatal("a relay started without its request log")
	}
	if err := os.Remove(wal); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(wal+".aside", wal); err != nil {
		t.Fatal(err)
	}

	e.start()
	if e.srv.st.unclean {
		t.Fatal("a clean store taken for a crashed one after a failed start")
	}
	st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil)
	if got := decode[protocol.Record](t, body); st != http.StatusOK || got.State != protocol.StateCanceled {
		t.Fatalf("cancel of a request never delivered: %d %s", st, got.State)
	}
}

// A submission whose commit failed in a way that leaves its record in the
// request log (the failed records could not be cut off: here the log file
// is closed) may come back at the next start. The relay therefore keeps
// it, tells the client its id with the 500, and runs it when its device
// is back, instead of forgetting it and letting the client submit it a
// second time.
func TestSubmitThatMayBeStoredIsKept(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	restore := breakCommits(t, e.srv.st)
	st, body := e.do("POST", "/v1/devices/dev1/requests", protocol.Submit{Method: "m"})
	answer := decode[struct {
		Error   protocol.Failure
		Request protocol.Record
	}](t, body)
	if st != http.StatusInternalServerError || answer.Request.ID == "" {
		t.Fatalf("submit whose commit may be stored: %d %s, want 500 naming the request", st, body)
	}
	if !strings.Contains(answer.Error.Message, "may") {
		t.Errorf("message %q does not say the request may run", answer.Error.Message)
	}
	restore()
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != answer.Request.ID {
		t.Fatalf("delivered %s, want %s", req.ID, answer.Request.ID)
	}
	a.succeed(answer.Request.ID, `"ran"`)
	if got := e.record(answer.Request.ID, waitLimit.String()); got.State != protocol.StateSucceeded {
		t.Fatalf("%s: %s", answer.Request.ID, got.State)
	}
}
