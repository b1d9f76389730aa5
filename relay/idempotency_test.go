package relay

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// submitKeyed posts body to dev1 with the Idempotency-Key header (none if
// key is "") under client key ck, and returns status and body.
func (e *env) submitKeyed(ck, key, body string) (int, protocol.Record, string) {
	e.t.Helper()
	hdr := http.Header{}
	if key != "" {
		hdr.Set("Idempotency-Key", key)
	}
	st, b := e.doAs(ck, hdr, "POST", "/v1/devices/dev1/requests", body)
	var rec protocol.Record
	if st < 300 {
		rec = decode[protocol.Record](e.t, b)
	}
	return st, rec, string(b)
}

// swapRequestCommits replaces how the request log commits a group, and
// returns the function that puts the real one back.
func swapRequestCommits(st *store, run func(real func([]*commitCall[walOp]), group []*commitCall[walOp])) (restore func()) {
	g := st.reqs.commit
	g.mu.Lock()
	real := g.run
	g.run = func(group []*commitCall[walOp]) { run(real, group) }
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.run = real
		g.mu.Unlock()
	}
}

// A submission retried with its key, over REST (header or body) or
// /v1/client, gets the request the first one made, queued or finished,
// and the device runs it once.
func TestKeyedSubmitRetriedGetsSameRequest(t *testing.T) {
	e := newEnv(t)
	body := `{"method":"gpio.write","params":{"pin":17,"level":1}}`
	st, first, _ := e.submitKeyed(e.key, "order-42", body)
	if st != http.StatusAccepted {
		t.Fatalf("first submit: %d", st)
	}
	for _, retry := range []struct{ key, body string }{
		{"order-42", body},
		{`"order-42"`, body}, // the draft standard's quoted form
		{"", `{"method":"gpio.write","params":{"pin":17,"level":1},"key":"order-42"}`},
		{"order-42", `{"method":"gpio.write","params":{ "pin": 17, "level": 1 }}`}, // same JSON
	} {
		st, rec, raw := e.submitKeyed(e.key, retry.key, retry.body)
		if st != http.StatusAccepted || rec.ID != first.ID {
			t.Fatalf("retry %+v: %d %s, want 202 with %s", retry, st, raw, first.ID)
		}
	}
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "call", "ref": "r", "device": "dev1", "method": "gpio.write",
		"params": map[string]int{"pin": 17, "level": 1}, "key": "order-42"})
	if acc := clientNext[*protocol.ClientAccepted](c); acc.ID != first.ID || acc.Ref != "r" {
		t.Fatalf("call with the key: %+v, want %s", acc, first.ID)
	}
	if q := e.device("dev1").Queued; q != 1 {
		t.Fatalf("%d requests queued, want 1", q)
	}
	m := scrape(t, e)
	if n, r := m[`tether_relay_requests_submitted_total{method="gpio.write"}`], m[`tether_relay_requests_replayed_total{method="gpio.write"}`]; n != 1 || r != 5 {
		t.Fatalf("metrics: %v submitted, %v replayed; want 1 and 5", n, r)
	}

	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 4})
	req := nextAs[*protocol.Request](a)
	a.succeed(req.ID, `{}`)
	a.quiet(100 * time.Millisecond) // nothing more to deliver
	if res := clientNext[*protocol.ClientResult](c); res.ID != first.ID {
		t.Fatalf("result for %s, want %s", res.ID, first.ID)
	}
	waitFor(t, "the request settled", func() bool { return e.record(first.ID, "").State == protocol.StateSucceeded })
	st, rec, raw := e.submitKeyed(e.key, "order-42", body)
	if st != http.StatusOK || rec.ID != first.ID || rec.State != protocol.StateSucceeded {
		t.Fatalf("retry after the result: %d %s, want 200 with the succeeded %s", st, raw, first.ID)
	}
}

// A key given with a different submission is refused (422 key_reused,
// and an error frame on /v1/client), and changes nothing; another
// client's key of the same text is its own.
func TestKeyReusedForAnotherSubmissionRefused(t *testing.T) {
	e := newEnv(t)
	_, first, _ := e.submitKeyed(e.key, "k1", `{"method":"gpio.write","params":{"pin":17,"level":1}}`)
	for _, body := range []string{
		`{"method":"gpio.write","params":{"pin":17,"level":0}}`,
		`{"method":"gpio.read","params":{"pin":17,"level":1}}`,
		`{"method":"gpio.write","params":{"pin":17,"level":1},"timeout":"1s"}`,
		`{"method":"gpio.write","params":{"pin":17,"level":1},"idempotent":true}`,
	} {
		st, _, raw := e.submitKeyed(e.key, "k1", body)
		if st != http.StatusUnprocessableEntity || apiCode(t, []byte(raw)) != codeKeyReused || !strings.Contains(raw, first.ID) {
			t.Fatalf("%s: %d %s, want 422 key_reused naming %s", body, st, raw, first.ID)
		}
	}
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "call", "ref": "x", "device": "dev1", "method": "sys.ping", "key": "k1"})
	if er := clientNext[*protocol.ClientError](c); er.Code != codeKeyReused || er.Ref != "x" {
		t.Fatalf("call reusing a key: %+v", er)
	}
	if st, _, raw := e.submitKeyed(e.key, "k1", `{"method":"m","key":"k2"}`); st != http.StatusBadRequest {
		t.Fatalf("header and body keys differ: %d %s", st, raw)
	}
	if st, _, raw := e.submitKeyed(e.key, strings.Repeat("k", protocol.MaxIDLen+1), `{"method":"m"}`); st != http.StatusBadRequest || apiCode(t, []byte(raw)) != protocol.CodeBadParams {
		t.Fatalf("overlong key: %d %s", st, raw)
	}

	other, err := AddClient(e.cfg.DataDir, "other")
	if err != nil {
		t.Fatal(err)
	}
	st, rec, raw := e.submitKeyed(other, "k1", `{"method":"sys.ping"}`)
	if st != http.StatusAccepted || rec.ID == first.ID {
		t.Fatalf("another client's k1: %d %s, want a new request", st, raw)
	}
	if q := e.device("dev1").Queued; q != 2 {
		t.Fatalf("%d queued, want 2", q)
	}
}

// Keys are stored with their requests: a relay that restarts, cleanly or
// after a crash, still answers a retry with the request, queued or
// finished.
func TestKeySurvivesRestartAndCrash(t *testing.T) {
	e := newEnv(t)
	_, queued, _ := e.submitKeyed(e.key, "q", `{"method":"m"}`)
	_, done, _ := e.submitKeyed(e.key, "d", `{"method":"m"}`)
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != queued.ID {
		t.Fatalf("delivered %s first, want %s", req.ID, queued.ID)
	}
	a.close()
	// Settle "d" without running "q": cancel it while queued.
	if st, _ := e.do("DELETE", "/v1/requests/"+done.ID, nil); st != http.StatusOK {
		t.Fatalf("cancel: %d", st)
	}
	for _, restart := range []func(){e.restart, e.crash} {
		restart()
		for key, want := range map[string]protocol.Record{"q": queued, "d": done} {
			st, rec, raw := e.submitKeyed(e.key, key, `{"method":"m"}`)
			if st >= 300 || rec.ID != want.ID {
				t.Fatalf("retry of %s after a restart: %d %s, want %s", key, st, raw, want.ID)
			}
		}
	}
	if q := e.device("dev1").Queued; q != 1 {
		t.Fatalf("%d queued, want 1", q)
	}
}

// A key is kept as long as its request: once the request is deleted
// (result retention), the key makes a new request.
func TestKeyFreedWithItsRequest(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ResultRetention = 50 * time.Millisecond })
	_, first, _ := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	if st, _ := e.do("DELETE", "/v1/requests/"+first.ID, nil); st != http.StatusOK {
		t.Fatalf("cancel: %d", st)
	}
	waitFor(t, "the request deleted", func() bool {
		st, _ := e.do("GET", "/v1/requests/"+first.ID, nil)
		return st == http.StatusNotFound
	})
	st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	if st != http.StatusAccepted || rec.ID == first.ID {
		t.Fatalf("key after its request was deleted: %d %s, want a new request", st, raw)
	}
	e.restart()
	if _, again, _ := e.submitKeyed(e.key, "k", `{"method":"m"}`); again.ID != rec.ID {
		t.Fatalf("after a restart the key names %s, want %s", again.ID, rec.ID)
	}
}

// Retries that come while the first submission is still being stored
// wait for it and get its request; if its commit fails, the key is free
// and a retry makes the request anew. Only one request is ever queued.
func TestKeyedRetriesDuringTheFirstCommit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	hold := make(chan struct{})
	var release sync.Once
	defer release.Do(func() { close(hold) }) // a failed test still stops
	failing := true
	restore := swapRequestCommits(e.srv.st, func(real func([]*commitCall[walOp]), group []*commitCall[walOp]) {
		<-hold
		if failing {
			for _, c := range group {
				c.finish(errors.New("disk full"))
			}
			return
		}
		real(group)
	})
	type answer struct {
		st  int
		rec protocol.Record
		raw string
	}
	const n = 8
	answers := make(chan answer, n)
	for range n {
		go func() {
			st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
			answers <- answer{st, rec, raw}
		}()
	}
	// Every submission is in: one is being committed, the others wait
	// for it.
	waitFor(t, "the submissions in", func() bool {
		e.srv.hub.mu.Lock()
		defer e.srv.hub.mu.Unlock()
		return len(e.srv.hub.keys) == 1
	})
	time.Sleep(50 * time.Millisecond)
	release.Do(func() { close(hold) })
	// The first commit fails; the waiting retries find the key free and
	// one of them makes the request again, which fails too until the
	// store is mended.
	for range n {
		if a := <-answers; a.st != http.StatusInternalServerError {
			t.Fatalf("while commits fail: %d %s", a.st, a.raw)
		}
	}
	failing = false
	restore()
	st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	if st != http.StatusAccepted {
		t.Fatalf("after the store mended: %d %s", st, raw)
	}
	if q := e.device("dev1").Queued; q != 1 {
		t.Fatalf("%d queued, want 1", q)
	}

	// Now with commits that succeed but are slow: every retry gets the
	// one request.
	hold2 := make(chan struct{})
	var release2 sync.Once
	defer release2.Do(func() { close(hold2) })
	restore = swapRequestCommits(e.srv.st, func(real func([]*commitCall[walOp]), group []*commitCall[walOp]) {
		<-hold2
		real(group)
	})
	defer restore()
	for range n {
		go func() {
			st, rec, raw := e.submitKeyed(e.key, "k2", `{"method":"m"}`)
			answers <- answer{st, rec, raw}
		}()
	}
	waitFor(t, "the submissions in", func() bool {
		e.srv.hub.mu.Lock()
		defer e.srv.hub.mu.Unlock()
		return len(e.srv.hub.keys) == 2
	})
	time.Sleep(50 * time.Millisecond)
	release2.Do(func() { close(hold2) })
	var id string
	for range n {
		a := <-answers
		if a.st != http.StatusAccepted || (id != "" && a.rec.ID != id) {
			t.Fatalf("concurrent keyed submissions: %d %s (first id %s)", a.st, a.raw, id)
		}
		id = a.rec.ID
	}
	if q := e.device("dev1").Queued; q != 2 || id == rec.ID {
		t.Fatalf("%d queued (want 2), ids %s %s", q, id, rec.ID)
	}
}

// A retry of a request that is already stored is answered even when the
// device's queue is full: it adds nothing to it.
func TestKeyedRetryAtAFullQueue(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QueueLimit = 1 })
	_, first, _ := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	if st, _, raw := e.submitKeyed(e.key, "", `{"method":"m"}`); st != http.StatusTooManyRequests {
		t.Fatalf("unkeyed submit at a full queue: %d %s", st, raw)
	}
	if st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`); st != http.StatusAccepted || rec.ID != first.ID {
		t.Fatalf("keyed retry at a full queue: %d %s", st, raw)
	}
}

// A keyed request reaches its device only once it is stored, and what was
// queued after it waits behind it: a relay that crashed before the commit
// ended must not leave behind an action that ran although its client,
// told nothing, submits it again with its key.
func TestKeyedRequestDeliveredOnlyOnceStored(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 4})
	hold := make(chan struct{})
	var release sync.Once
	restore := swapRequestCommits(e.srv.st, func(real func([]*commitCall[walOp]), group []*commitCall[walOp]) {
		<-hold
		real(group)
	})
	defer restore()
	defer release.Do(func() { close(hold) }) // a failed test still stops
	keyed := make(chan protocol.Record, 1)
	go func() {
		_, rec, _ := e.submitKeyed(e.key, "k", `{"method":"first"}`)
		keyed <- rec
	}()
	waitFor(t, "the keyed submission queued", func() bool { return e.device("dev1").Queued == 1 })
	go e.submitKeyed(e.key, "", `{"method":"second"}`)
	waitFor(t, "the second queued", func() bool { return e.device("dev1").Queued == 2 })
	a.quiet(100 * time.Millisecond) // nothing delivered while the commit is held
	release.Do(func() { close(hold) })
	rec := <-keyed
	if req := nextAs[*protocol.Request](a); req.ID != rec.ID || req.Method != "first" {
		t.Fatalf("delivered %s %s first, want the keyed %s", req.ID, req.Method, rec.ID)
	}
	if req := nextAs[*protocol.Request](a); req.Method != "second" {
		t.Fatalf("delivered %s second", req.Method)
	}
}
