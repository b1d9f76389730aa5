package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

func TestAgentHandshakeRefusals(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name     string
		token    string
		protos   []string
		status   int
		code     string
		contains string
	}{
		{"no token", "", []string{protocol.Version}, 401, codeUnauthorized, ""},
		{"wrong token", DeviceTokenPrefix + "nope", []string{protocol.Version}, 401, codeUnauthorized, ""},
		{"client key as token", e.key, []string{protocol.Version}, 401, codeUnauthorized, ""},
		{"no subprotocol", e.token, nil, 400, codeBadRequest, "unsupported subprotocol, want tether.v1"},
		{"other subprotocol", e.token, []string{"tether.v0"}, 400, codeBadRequest, "want tether.v1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, resp, err := dialRaw(e, tc.token, tc.protos)
			if err == nil {
				conn.Close()
				t.Fatal("handshake succeeded")
			}
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if got := apiCode(t, body); got != tc.code {
				t.Errorf("code %q, want %q", got, tc.code)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body %s lacks %q", body, tc.contains)
			}
		})
	}
	t.Run("accepted", func(t *testing.T) {
		conn, resp, err := dialRaw(e, e.token, []string{protocol.Version})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols || conn.Subprotocol() != protocol.Version {
			t.Fatalf("status %d subprotocol %q", resp.StatusCode, conn.Subprotocol())
		}
	})
}

func TestSubmitDeliverResultAck(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	if !e.device("dev1").Online {
		t.Fatal("device not online after hello")
	}
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "sys.ping", Params: json.RawMessage(`{"x":1}`), Timeout: protocol.Duration(3 * time.Second)})
	// The request may be delivered while its submit is committed.
	if (rec.State != protocol.StateQueued && rec.State != protocol.StateDelivered) || rec.ID == "" || rec.Device != "dev1" {
		t.Fatalf("submit answered %+v", rec)
	}
	req := nextAs[*protocol.Request](a)
	if req.ID != rec.ID || req.Method != "sys.ping" || string(req.Params) != `{"x":1}` || req.Attempt != 1 {
		t.Fatalf("request %+v", req)
	}
	if req.TimeoutMs <= 0 || req.TimeoutMs > 3000 {
		t.Fatalf("timeout_ms %d, want remaining time within 3000", req.TimeoutMs)
	}
	if got := e.record(rec.ID, ""); got.State != protocol.StateDelivered || got.Attempts != 1 {
		t.Fatalf("after delivery: %+v", got)
	}
	a.succeed(rec.ID, `{"pong":true}`)
	got := e.record(rec.ID, "")
	if got.State != protocol.StateSucceeded || string(got.Result) != `{"pong":true}` || got.Finished == nil {
		t.Fatalf("after result: %+v", got)
	}
}

func TestSubmitWaitReturnsFinished(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		select {
		case b := <-a.frames:
			m, err := protocol.Decode(b, 0)
			if err != nil {
				return
			}
			if req, ok := m.(*protocol.Request); ok {
				a.conn.WriteJSON(map[string]any{"type": "result", "id": req.ID, "state": "succeeded", "value": 42})
			}
		case <-time.After(waitLimit):
		}
	}()
	st, body := e.do("POST", "/v1/devices/dev1/requests?wait=5s", protocol.Submit{Method: "sys.ping"})
	<-answered
	if st != http.StatusOK {
		t.Fatalf("status %d: %s", st, body)
	}
	rec := decode[protocol.Record](t, body)
	if rec.State != protocol.StateSucceeded || string(rec.Result) != "42" {
		t.Fatalf("record %+v", rec)
	}
}

func TestQueuedWhileOfflineDeliveredOnConnect(t *testing.T) {
	e := newEnv(t)
	r1 := e.submit(protocol.Submit{Method: "a"})
	r2 := e.submit(protocol.Submit{Method: "b"})
	if d := e.device("dev1"); d.Online || d.Queued != 2 {
		t.Fatalf("device %+v, want offline with 2 queued", d)
	}
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 5})
	for _, want := range []string{r1.ID, r2.ID} {
		if got := nextAs[*protocol.Request](a); got.ID != want {
			t.Fatalf("delivered %s, want %s", got.ID, want)
		}
	}
}

func TestCreditsBoundOutstanding(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, e.submit(protocol.Submit{Method: "m"}).ID)
	}
	a.quiet(30 * time.Millisecond) // no credits, no work
	for i, want := range ids {
		a.send(&protocol.Pull{N: 1})
		req := nextAs[*protocol.Request](a)
		if req.ID != want {
			t.Fatalf("request %d is %s, want %s", i, req.ID, want)
		}
		// One credit, one request: nothing more until the next pull.
		a.quiet(30 * time.Millisecond)
		a.succeed(req.ID, `{}`)
	}
}

func TestLeaseRedeliveryAndUndeliverable(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxAttempts = 2 })
	rec := e.submit(protocol.Submit{Method: "m"})
	for attempt := 1; attempt <= 2; attempt++ {
		a := dialAgent(e, e.token)
		a.send(&protocol.Pull{N: 1})
		req := nextAs[*protocol.Request](a)
		if req.ID != rec.ID || req.Attempt != attempt {
			t.Fatalf("delivery %d: %+v", attempt, req)
		}
		a.close()
		waitFor(t, "requeue after drop", func() bool { return e.record(rec.ID, "").State == protocol.StateQueued })
		if got := e.record(rec.ID, ""); got.Attempts != attempt {
			t.Fatalf("attempts %d, want %d", got.Attempts, attempt)
		}
	}
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	got := e.record(rec.ID, "5s")
	if got.State != protocol.StateFailed || got.Error == nil || got.Error.Code != protocol.CodeUndeliverable {
		t.Fatalf("record %+v, want failed/undeliverable", got)
	}
	a.quiet(30 * time.Millisecond)
}

func TestHelloRunningReleases(t *testing.T) {
	for _, replace := range []bool{false, true} {
		name := "after drop"
		if replace {
			name = "replacing live session"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			first := e.submit(protocol.Submit{Method: "m"})
			second := e.submit(protocol.Submit{Method: "m"})
			a := dialAgent(e, e.token)
			a.send(&protocol.Pull{N: 1})
			if req := nextAs[*protocol.Request](a); req.ID != first.ID {
				t.Fatalf("got %s", req.ID)
			}
			if !replace {
				a.close()
				waitFor(t, "offline", func() bool { return !e.device("dev1").Online })
			}
			b := dialAgent(e, e.token, first.ID)
			if replace {
				if code := a.closed(); code != websocket.CloseNormalClosure {
					t.Fatalf("old session closed with %d", code)
				}
			}
			got := e.record(first.ID, "")
			if got.State != protocol.StateDelivered || got.Attempts != 1 {
				t.Fatalf("re-leased record %+v", got)
			}
			// The re-lease used no credit: one pull brings the second request.
			b.send(&protocol.Pull{N: 1})
			if req := nextAs[*protocol.Request](b); req.ID != second.ID {
				t.Fatalf("pull delivered %s, want %s", req.ID, second.ID)
			}
			b.succeed(first.ID, `1`)
			if got := e.record(first.ID, ""); got.State != protocol.StateSucceeded || got.Attempts != 1 {
				t.Fatalf("final %+v", got)
			}
		})
	}
}

func TestFirstResultWinsDuplicatesAcked(t *testing.T) {
	e := newEnv(t)
	a, rec := deliveredRequest(e)
	a.succeed(rec.ID, `"first"`)
	a.send(&protocol.Result{ID: rec.ID, State: protocol.StateFailed, Error: &protocol.Failure{Code: "hw_error"}})
	if ack := nextAs[*protocol.Ack](a); len(ack.IDs) != 1 || ack.IDs[0] != rec.ID {
		t.Fatalf("duplicate ack %+v", ack)
	}
	a.succeed("r-unknown", `1`)
	if got := e.record(rec.ID, ""); got.State != protocol.StateSucceeded || string(got.Result) != `"first"` {
		t.Fatalf("record %+v", got)
	}
}

func TestCancel(t *testing.T) {
	e := newEnv(t)
	t.Run("queued", func(t *testing.T) {
		rec := e.submit(protocol.Submit{Method: "m"})
		st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil)
		got := decode[protocol.Record](t, body)
		if st != http.StatusOK || got.State != protocol.StateCanceled || got.Error.Code != protocol.CodeCanceled {
			t.Fatalf("status %d record %+v", st, got)
		}
		st, body = e.do("DELETE", "/v1/requests/"+rec.ID, nil)
		if st != http.StatusConflict || apiCode(t, body) != protocol.CodeBadState || !strings.Contains(string(body), `"state":"canceled"`) {
			t.Fatalf("second cancel: %d %s", st, body)
		}
	})
	t.Run("delivered", func(t *testing.T) {
		a := dialAgent(e, e.token)
		a.send(&protocol.Pull{N: 1})
		rec := e.submit(protocol.Submit{Method: "m"})
		nextAs[*protocol.Request](a)
		st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil)
		if got := decode[protocol.Record](t, body); st != http.StatusAccepted || got.State != protocol.StateDelivered {
			t.Fatalf("status %d record %+v", st, got)
		}
		if c := nextAs[*protocol.Cancel](a); c.ID != rec.ID {
			t.Fatalf("cancel for %s", c.ID)
		}
		a.send(&protocol.Result{ID: rec.ID, State: protocol.StateCanceled, Error: &protocol.Failure{Code: protocol.CodeCanceled, Message: "stopped"}})
		nextAs[*protocol.Ack](a)
		if got := e.record(rec.ID, ""); got.State != protocol.StateCanceled {
			t.Fatalf("record %+v", got)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		if st, body := e.do("DELETE", "/v1/requests/nope", nil); st != http.StatusNotFound || apiCode(t, body) != protocol.CodeNotFound {
			t.Fatalf("%d %s", st, body)
		}
	})
}

func TestQueuedRequestExpires(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m", Timeout: protocol.Duration(30 * time.Millisecond)})
	got := e.record(rec.ID, "5s")
	if got.State != protocol.StateExpired || got.Error == nil || got.Error.Code != protocol.CodeExpired {
		t.Fatalf("record %+v", got)
	}
	// An agent connecting later gets nothing.
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	a.quiet(30 * time.Millisecond)
}

func TestAgentBadFrames(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 2048 })
	tests := []struct {
		name     string
		hello    bool
		frame    []byte
		wantCode string
		close    int
	}{
		{"malformed JSON", true, []byte(`{"type":`), protocol.CodeBadFrame, websocket.CloseProtocolError},
		{"oversized", true, []byte(`{"type":"pull","n":1,"pad":"` + strings.Repeat("x", 4096) + `"}`), protocol.CodeTooLarge, websocket.CloseMessageTooBig},
		{"oversized within slack", true, []byte(`{"type":"pull","pad":"` + strings.Repeat("x", 3*2048) + `"}`), protocol.CodeTooLarge, websocket.CloseMessageTooBig},
		{"unknown type", true, []byte(`{"type":"bogus"}`), protocol.CodeUnknownType, websocket.CloseProtocolError},
		{"invalid pull", true, []byte(`{"type":"pull","n":0}`), protocol.CodeBadFrame, websocket.CloseProtocolError},
		{"welcome from agent", true, []byte(`{"type":"welcome","session":"s","device":"d","max_frame":2048,"ping_ms":1}`), protocol.CodeBadState, websocket.ClosePolicyViolation},
		{"second hello", true, []byte(`{"type":"hello","agent":"x"}`), protocol.CodeBadState, websocket.ClosePolicyViolation},
		{"pull before hello", false, []byte(`{"type":"pull","n":1}`), protocol.CodeBadState, websocket.ClosePolicyViolation},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var a *testAgent
			if tc.hello {
				a = dialAgent(e, e.token)
			} else {
				a = connect(e, e.token)
			}
			// The relay may answer (and close) while a large frame is still
			// being written in fragments, so a failed write is fine here.
			a.conn.WriteMessage(websocket.TextMessage, tc.frame)
			ef := nextAs[*protocol.Error](a)
			if ef.Code != tc.wantCode {
				t.Fatalf("error frame %+v, want code %s", ef, tc.wantCode)
			}
			if code := a.closed(); code != tc.close {
				t.Fatalf("close code %d, want %d", code, tc.close)
			}
		})
	}
}

func TestHelloTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HelloTimeout = 30 * time.Millisecond })
	a := connect(e, e.token)
	if ef := nextAs[*protocol.Error](a); ef.Code != protocol.CodeBadState {
		t.Fatalf("error frame %+v", ef)
	}
	if code := a.closed(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d", code)
	}
}

func TestRelayPingsAndDropsSilentAgent(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PingPeriod = 20 * time.Millisecond })
	pinged := make(chan struct{}, 1)
	// Answer no pongs: the relay must give up after DeadAfter(PingPeriod).
	a := connect(e, e.token, func(c *websocket.Conn) {
		c.SetPingHandler(func(string) error {
			select {
			case pinged <- struct{}{}:
			default:
			}
			return nil
		})
	})
	a.send(&protocol.Hello{Agent: "test/1"})
	nextAs[*protocol.Welcome](a)
	select {
	case <-pinged:
	case <-time.After(waitLimit):
		t.Fatal("no ping")
	}
	if code := a.closed(); code != websocket.CloseGoingAway {
		t.Fatalf("close code %d", code)
	}
	waitFor(t, "offline", func() bool { return !e.device("dev1").Online })
}

// A shutdown closes every session with 1012 and asks each agent back at
// its own moment, one admission slot apart, starting a second later.
func TestShutdownClosesSessionsPolitely(t *testing.T) {
	const n = 5
	e := newEnv(t, func(c *Config) { c.AdmitRate = 100 })
	agents := []*testAgent{dialAgent(e, e.token)}
	for i := 1; i < n; i++ {
		tok, err := AddDevice(e.cfg.DataDir, fmt.Sprint("dev", i+1))
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, dialAgent(e, tok))
	}
	e.stopRun()
	var delays []time.Duration
	for _, a := range agents {
		if code := a.closed(); code != protocol.CloseRestart {
			t.Fatalf("close code %d", code)
		}
		var ce *websocket.CloseError
		errors.As(a.err(), &ce)
		d, ok := protocol.ParseRestart(ce.Code, ce.Text)
		if !ok {
			t.Fatalf("close reason %q has no reconnect delay", ce.Text)
		}
		delays = append(delays, d)
	}
	<-e.runDone
	slices.Sort(delays)
	slot := time.Second / 90 // 100/s with 10% headroom
	for i, d := range delays {
		if want := time.Second + time.Duration(i)*slot; d < want-time.Millisecond || d > want+time.Millisecond {
			t.Errorf("delays %v: #%d is %v, want %v", delays, i, d, want)
		}
	}
}

// A frame far beyond MaxFrame is cut off by gorilla's hard read limit: the
// relay reads none of it and the connection ends (1009 if the close frame
// gets through before the reset).
func TestAgentHugeFrameCutOff(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 1024 })
	a := dialAgent(e, e.token)
	a.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"pull","pad":"`+strings.Repeat("x", 64*1024)+`"}`))
	select {
	case <-a.done:
	case <-time.After(waitLimit):
		t.Fatal("connection not closed")
	}
	var ce *websocket.CloseError
	if errors.As(a.err(), &ce) && ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d", ce.Code)
	}
	waitFor(t, "offline", func() bool { return !e.device("dev1").Online })
}

// Acks of results committed close together share one ack frame: the
// first waits up to ackDelay for company. Each result is still acked,
// and only after its commit.
func TestAcksShareFrames(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	const n = 8
	a.send(&protocol.Pull{N: n})
	ids := make(map[string]bool)
	for range n {
		rec := e.submit(protocol.Submit{Method: "m"})
		ids[rec.ID] = false
	}
	for range n {
		nextAs[*protocol.Request](a)
	}
	for id := range ids {
		a.send(&protocol.Result{ID: id, State: protocol.StateSucceeded, Value: json.RawMessage(`1`)})
	}
	frames, _ := readAcks(a, ids, 0, n)
	// The results are committed in one or a few groups, never eight.
	if frames > n/2 {
		t.Errorf("%d results acked in %d frames", n, frames)
	}
	for id := range ids {
		if got := e.record(id, ""); got.State != protocol.StateSucceeded {
			t.Fatalf("%s is %s", id, got.State)
		}
	}
}

// Acks that would overflow the agent's largest frame are split over
// several frames, each within it. Results for ids the relay does not know
// (of the longest length, half of them with characters JSON escapes) are
// acked too, so the agent drops them.
func TestAcksSplitToFrameLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 1024 })
	a := connect(e, e.token, func(c *websocket.Conn) { c.SetReadLimit(1024) })
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock", Methods: []string{"sys.ping"}})
	nextAs[*protocol.Welcome](a)

	const n = 60 // over 20 KiB of ids: eight frames or more
	ids := make(map[string]bool, n)
	for i := range n {
		id := fmt.Sprintf("%0*d", protocol.MaxIDLen, i)
		if i%2 == 1 { // six bytes each in JSON
			id = strings.Repeat("<", protocol.MaxIDLen-4) + id[protocol.MaxIDLen-4:]
		}
		ids[id] = false
		a.send(&protocol.Result{ID: id, State: protocol.StateSucceeded})
	}
	frames, acked := readAcks(a, ids, 0, n-10) // the last few may wait for ackDelay
	if frames < 8 {
		t.Errorf("%d acks of %d-byte ids in %d frames of at most 1 KiB", acked, protocol.MaxIDLen, frames)
	}
	readAcks(a, ids, acked, n)
}

// readAcks reads ack frames until want of ids, acked already before it,
// are acked, failing on an id that is unknown or acked twice. It returns
// the frames it read and the ids acked.
func readAcks(a *testAgent, ids map[string]bool, acked, want int) (frames, total int) {
	a.t.Helper()
	for acked < want {
		for _, id := range nextAs[*protocol.Ack](a).IDs {
			if done, ok := ids[id]; !ok || done {
				a.t.Fatalf("ack of %.40s: unknown or twice", id)
			}
			ids[id] = true
			acked++
		}
		frames++
	}
	return frames, acked
}

// A result whose commit fails is not acked: the session ends with an
// internal error, and the agent, still holding the result, sends it again
// to its next session, which commits and acks it once the request log
// has a sound file again.
func TestResultCommitFailureNotAcked(t *testing.T) {
	e := newEnv(t)
	a, rec := deliveredRequest(e)
	defer breakLog(t, e.srv.st.reqs).Close()

	a.send(&protocol.Result{ID: rec.ID, State: protocol.StateSucceeded, Value: json.RawMessage(`"kept"`)})
	if m := nextAs[*protocol.Error](a); m.Code != protocol.CodeInternal {
		t.Fatalf("error frame %+v, want %s", m, protocol.CodeInternal)
	}
	if code := a.closed(); code != websocket.CloseInternalServerErr {
		t.Fatalf("close code %d, want %d", code, websocket.CloseInternalServerErr)
	}

	acked := false
	for deadline := time.Now().Add(waitLimit); !acked; {
		if time.Now().After(deadline) {
			t.Fatal("the result was never acked")
		}
		b := dialAgent(e, e.token, rec.ID)
		b.send(&protocol.Result{ID: rec.ID, State: protocol.StateSucceeded, Value: json.RawMessage(`"kept"`)})
		switch m := b.next().(type) {
		case *protocol.Ack:
			acked = len(m.IDs) == 1 && m.IDs[0] == rec.ID
			if !acked {
				t.Fatalf("ack %+v", m)
			}
		case *protocol.Error: // the log is not replaced yet
			b.closed()
			time.Sleep(10 * time.Millisecond)
		default:
			t.Fatalf("got %T %+v", m, m)
		}
	}
	if got := e.record(rec.ID, ""); got.State != protocol.StateSucceeded || string(got.Result) != `"kept"` {
		t.Fatalf("record %+v", got)
	}
}

// A request a client cancels after a delivery whose session was lost may
// have run: the relay asks the agent's next session instead of deciding.
// The agent's result, if it kept one, is recorded; a request it still
// runs is re-leased and sent a cancel; one it does not have ends
// canceled once its session takes work.
func TestCancelOfARequestThatMayHaveRun(t *testing.T) {
	lost := func(t *testing.T, e *env, cancelFirst bool) protocol.Record {
		t.Helper()
		a, rec := deliveredRequest(e)
		if cancelFirst {
			if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != http.StatusAccepted {
				t.Fatalf("cancel of a delivered request: %d %s", st, body)
			}
			nextAs[*protocol.Cancel](a)
		}
		a.close()
		waitFor(t, "offline", func() bool { return !e.device("dev1").Online })
		if !cancelFirst {
			if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != http.StatusAccepted || decode[protocol.Record](t, body).State != protocol.StateQueued {
				t.Fatalf("cancel of a requeued request: %d %s", st, body)
			}
		}
		return rec
	}
	for _, cancelFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("cancel before the loss %v/result kept", cancelFirst), func(t *testing.T) {
			e := newEnv(t)
			rec := lost(t, e, cancelFirst)
			b := dialAgent(e, e.token)
			b.succeed(rec.ID, `{"done":true}`)
			if got := e.record(rec.ID, waitLimit.String()); got.State != protocol.StateSucceeded || string(got.Result) != `{"done":true}` {
				t.Fatalf("record %s %s %v", got.State, got.Result, got.Error)
			}
		})
		t.Run(fmt.Sprintf("cancel before the loss %v/still running", cancelFirst), func(t *testing.T) {
			e := newEnv(t)
			rec := lost(t, e, cancelFirst)
			b := dialAgent(e, e.token, rec.ID)
			if c := nextAs[*protocol.Cancel](b); c.ID != rec.ID {
				t.Fatalf("cancel %+v", c)
			}
			b.send(&protocol.Result{ID: rec.ID, State: protocol.StateCanceled, Error: protocol.Errorf(protocol.CodeCanceled, "stopped")})
			if got := e.record(rec.ID, waitLimit.String()); got.State != protocol.StateCanceled {
				t.Fatalf("record %s %v", got.State, got.Error)
			}
		})
		t.Run(fmt.Sprintf("cancel before the loss %v/not there", cancelFirst), func(t *testing.T) {
			e := newEnv(t)
			rec := lost(t, e, cancelFirst)
			b := dialAgent(e, e.token)
			b.send(&protocol.Pull{N: 1})
			b.quiet(50 * time.Millisecond) // not delivered again
			if got := e.record(rec.ID, waitLimit.String()); got.State != protocol.StateCanceled {
				t.Fatalf("record %s %v", got.State, got.Error)
			}
		})
	}
}

// A connection that never says hello is dropped at the hello timeout,
// however it keeps the link busy: answering the relay's pings, or sending
// its own. After hello, an agent's pings count as traffic like its pongs.
func TestHelloTimeoutNotExtendedByControlFrames(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.HelloTimeout = 300 * time.Millisecond
		c.PingPeriod = 50 * time.Millisecond
	})
	a := connect(e, e.token)
	defer a.pingEvery(20 * time.Millisecond)()
	start := time.Now()
	if code := a.closed(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("dropped after %v", took)
	}
}

// After hello, an agent that sends pings but answers none (and nothing
// else) is live: its pings are traffic.
func TestAgentPingsAreTraffic(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PingPeriod = 100 * time.Millisecond })
	a := connect(e, e.token, func(c *websocket.Conn) {
		c.SetPingHandler(func(string) error { return nil }) // never answers
	})
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock", Methods: []string{"sys.ping"}})
	nextAs[*protocol.Welcome](a)
	defer a.pingEvery(20 * time.Millisecond)()
	time.Sleep(time.Second) // 10 ping periods; dead after 2.5 without traffic
	if !e.device("dev1").Online {
		t.Fatal("an agent sending pings was dropped")
	}
}

// pingEvery sends a ping every d until the function it returns is called.
func (a *testAgent) pingEvery(d time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(d):
				a.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
			}
		}
	}()
	return func() { close(done) }
}

// A cancel waiting on the device is stored with its request: a relay that
// restarts, cleanly or not, still waits on the device for it, and does
// not deliver the request again as if nobody had asked.
func TestCancelWaitingOnTheDeviceSurvivesARestart(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash %v", crash), func(t *testing.T) {
			e := newEnv(t)
			a, rec := deliveredRequest(e)
			a.close()
			waitFor(t, "offline", func() bool { return !e.device("dev1").Online })
			if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != http.StatusAccepted {
				t.Fatalf("cancel: %d %s", st, body)
			}
			if crash {
				e.crash()
			} else {
				e.restart()
			}
			b := dialAgent(e, e.token)
			b.send(&protocol.Pull{N: 1})
			b.quiet(50 * time.Millisecond) // not delivered again
			if got := e.record(rec.ID, waitLimit.String()); got.State != protocol.StateCanceled {
				t.Fatalf("after the restart: %s", got.State)
			}
		})
	}
}

// The welcome names the last event seq the relay stored from the device,
// also across a restart of the relay, so that an agent with no numbering
// of its own goes on above it.
func TestWelcomeNamesLastEvent(t *testing.T) {
	e := newEnv(t)
	a := connect(e, e.token)
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	if w := nextAs[*protocol.Welcome](a); w.LastEvent != 0 {
		t.Fatalf("welcome of a device without events: last_event %d", w.LastEvent)
	}
	sendEventsUpTo(t, a, 1, 3)
	a.close()
	e.restart()
	b := connect(e, e.token)
	b.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	if w := nextAs[*protocol.Welcome](b); w.LastEvent != 3 {
		t.Fatalf("welcome after events 1-3 and a restart: last_event %d, want 3", w.LastEvent)
	}
}

// An event the relay ignores (its seq is at or below the last one stored)
// is acked with that last seq, so that an agent whose numbering fell
// behind goes on above it.
func TestIgnoredEventAckedWithLastSeq(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	sendEventsUpTo(t, a, 1, 5)
	a.send(&protocol.Event{Seq: 2, Name: "e"})
	if ack := nextAs[*protocol.Ack](a); ack.Events != 5 {
		t.Fatalf("ack of an event below the last stored: events %d, want 5", ack.Events)
	}
}

// A session replaced by a newer one of its device stores no more events:
// the newer one's welcome named the last seq stored, and its agent (one
// on a new state directory, or without one) numbers its events from
// there, so an event the old session stored afterwards would take a seq
// of theirs, and the relay would ignore (and ack) the new agent's event.
func TestReplacedSessionStoresNoEvents(t *testing.T) {
	e := newEnv(t)
	// A does not answer the relay's close frame at once, so the relay
	// still reads what it sends after it is replaced.
	a := connect(e, e.token, func(c *websocket.Conn) {
		c.SetCloseHandler(func(int, string) error { return nil })
	})
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	nextAs[*protocol.Welcome](a)
	b := connect(e, e.token)
	b.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	if w := nextAs[*protocol.Welcome](b); w.LastEvent != 0 {
		t.Fatalf("welcome: last_event %d, want 0", w.LastEvent)
	}
	a.send(&protocol.Event{Seq: 1, Name: "old"})
	// A answers the close now: its session ends after reading the event.
	a.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	waitFor(t, "A's session to end", func() bool { return e.srv.sessions.count() == 1 })

	b.send(&protocol.Event{Seq: 1, Name: "new"})
	if ack := nextAs[*protocol.Ack](b); ack.Events != 1 {
		t.Fatalf("ack %+v, want events 1", ack)
	}
	evs, err := e.srv.Events("dev1", 0, 10)
	if err != nil || len(evs) != 1 || evs[0].Name != "new" {
		t.Fatalf("events %+v (err %v), want only B's event 1", evs, err)
	}
}

// A welcome names an event another session of the device is still
// committing: it waits for the commit, or the agent would number its
// events from below that event's seq.
func TestWelcomeWaitsForEventCommit(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	sendEventsUpTo(t, a, 1, 1)
	h := e.srv.hub
	h.mu.Lock()
	d := h.devices["dev1"]
	h.mu.Unlock()
	// As A's reader does while it stores event 2.
	d.evMu.Lock()
	locked := true
	defer func() {
		if locked {
			d.evMu.Unlock()
		}
	}()
	b := connect(e, e.token)
	b.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
	b.quiet(100 * time.Millisecond) // no welcome while event 2 is being stored
	h.mu.Lock()
	d.lastSeq = 2
	h.mu.Unlock()
	d.evMu.Unlock()
	locked = false
	if w := nextAs[*protocol.Welcome](b); w.LastEvent != 2 {
		t.Fatalf("welcome: last_event %d, want 2", w.LastEvent)
	}
}

// A frame the relay takes long to act on (an event's commit on a slow or
// busy disk, here past the silence limit of 2.5 pings) does not count as
// the agent's silence: its session stays, and the frames it sent
// meanwhile are read.
func TestSlowCommitIsNotTheAgentsSilence(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	g := e.srv.st.commit
	g.mu.Lock()
	real := g.run
	g.run = func(group []*commitCall[txFunc]) {
		time.Sleep(2 * protocol.DeadAfter(e.cfg.PingPeriod))
		real(group)
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.run = real
		g.mu.Unlock()
	}()
	for seq := uint64(1); seq <= 3; seq++ {
		a.send(&protocol.Event{Seq: seq, Name: "e"})
		if ack := nextAs[*protocol.Ack](a); ack.Events != seq {
			t.Fatalf("ack %+v, want events %d", ack, seq)
		}
	}
	if err := a.err(); err != nil {
		t.Fatalf("session ended while the relay was committing: %v", err)
	}
}
