package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// wsClient is a device-A client of /v1/client. Its reader goroutine queues
// every frame; tests read them with next.
type wsClient struct {
	t      *testing.T
	conn   *websocket.Conn
	frames chan []byte
	done   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	readErr error
}

func (e *env) clientURL(query string) string {
	u := "ws" + strings.TrimPrefix(e.ts.URL, "http") + protocol.ClientPath
	if query != "" {
		u += "?" + query
	}
	return u
}

// dialClientRaw dials /v1/client with the given headers and query.
func dialClientRaw(e *env, h http.Header, query string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: waitLimit}
	return d.Dial(e.clientURL(query), h)
}

func keyHeader(key string) http.Header {
	return http.Header{"Authorization": {"Bearer " + key}}
}

// dialClient connects with the env's client key and starts the reader.
func dialClient(e *env) *wsClient {
	e.t.Helper()
	conn, _, err := dialClientRaw(e, keyHeader(e.key), "")
	if err != nil {
		e.t.Fatalf("dial client: %v", err)
	}
	return startClient(e.t, conn)
}

func startClient(t *testing.T, conn *websocket.Conn) *wsClient {
	c := &wsClient{t: t, conn: conn, frames: make(chan []byte, 1024), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				c.mu.Lock()
				c.readErr = err
				c.mu.Unlock()
				return
			}
			c.frames <- b
		}
	}()
	t.Cleanup(c.close)
	return c
}

func (c *wsClient) close() {
	c.once.Do(func() { c.conn.Close() })
	<-c.done
}

func (c *wsClient) sendJSON(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *wsClient) sendRaw(b []byte) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *wsClient) next() protocol.Message {
	c.t.Helper()
	var b []byte
	select {
	case b = <-c.frames:
	case <-c.done:
		select {
		case b = <-c.frames:
		default:
			c.mu.Lock()
			err := c.readErr
			c.mu.Unlock()
			c.t.Fatalf("connection ended while waiting for a frame: %v", err)
		}
	case <-time.After(waitLimit):
		c.t.Fatal("timed out waiting for a frame")
	}
	m, err := protocol.DecodePush(b, 0)
	if err != nil {
		c.t.Fatalf("undecodable frame %s: %v", b, err)
	}
	return m
}

func clientNext[T protocol.Message](c *wsClient) T {
	c.t.Helper()
	m := c.next()
	v, ok := m.(T)
	if !ok {
		c.t.Fatalf("got %T %+v, want %T", m, m, v)
	}
	return v
}

// closed waits for the relay to close and returns its close code.
func (c *wsClient) closed() int {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitLimit):
		c.t.Fatal("connection not closed")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var ce *websocket.CloseError
	if !errors.As(c.readErr, &ce) {
		c.t.Fatalf("connection ended without a close frame: %v", c.readErr)
	}
	return ce.Code
}

func TestClientCallAcceptedThenResult(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	c := dialClient(e)

	c.sendJSON(map[string]any{"type": "call", "ref": "c1", "device": "dev1", "method": "sys.ping", "params": map[string]int{"n": 1}, "timeout": "5s"})
	acc := clientNext[*protocol.ClientAccepted](c)
	if acc.Ref != "c1" || acc.ID == "" || acc.Request.State != protocol.StateQueued || acc.Request.Device != "dev1" {
		t.Fatalf("accepted %+v", acc)
	}
	a.send(&protocol.Pull{N: 1})
	req := nextAs[*protocol.Request](a)
	if req.ID != acc.ID {
		t.Fatalf("agent got %s, want %s", req.ID, acc.ID)
	}
	a.succeed(req.ID, `{"pong":1}`)
	res := clientNext[*protocol.ClientResult](c)
	if res.ID != acc.ID || res.Ref != "c1" || res.State != protocol.StateSucceeded || string(res.Result) != `{"pong":1}` || res.Request.Finished == nil {
		t.Fatalf("result %+v", res)
	}
}

// Calls pipelined on one socket are queued in the order they were sent
// (their commits overlap): the agent receives them in that order.
func TestClientPipelinedCallsKeepOrder(t *testing.T) {
	e := newEnv(t)
	c := dialClient(e)
	const n = 20
	for i := 0; i < n; i++ {
		c.sendJSON(map[string]any{"type": "call", "ref": fmt.Sprint("c", i), "device": "dev1", "method": "gpio.write", "params": map[string]int{"n": i}, "timeout": "5s"})
	}
	ids := map[string]string{} // ref → id
	for len(ids) < n {
		acc := clientNext[*protocol.ClientAccepted](c)
		ids[acc.Ref] = acc.ID
	}
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: n})
	for i := 0; i < n; i++ {
		req := nextAs[*protocol.Request](a)
		if want := ids[fmt.Sprint("c", i)]; req.ID != want {
			t.Fatalf("delivery %d is %s (params %s), want the call sent %d-th, %s", i, req.ID, req.Params, i, want)
		}
	}
}

// A client that reconnects re-attaches to a request it submitted with get:
// it gets the current record now and the result whenever it comes.
func TestClientReattachWithGet(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	c1 := dialClient(e)
	c1.sendJSON(map[string]any{"type": "call", "ref": "x", "device": "dev1", "method": "sys.ping"})
	id := clientNext[*protocol.ClientAccepted](c1).ID
	c1.close()

	a.send(&protocol.Pull{N: 1})
	nextAs[*protocol.Request](a) // delivered, running

	c2 := dialClient(e)
	c2.sendJSON(map[string]any{"type": "get", "ref": "again", "id": id})
	acc := clientNext[*protocol.ClientAccepted](c2)
	if acc.ID != id || acc.Ref != "again" || acc.Request.State != protocol.StateDelivered {
		t.Fatalf("accepted %+v", acc)
	}
	// Asking twice keeps one waiter; the newest ref answers.
	c2.sendJSON(map[string]any{"type": "get", "ref": "third", "id": id})
	clientNext[*protocol.ClientAccepted](c2)
	a.succeed(id, `"late"`)
	res := clientNext[*protocol.ClientResult](c2)
	if res.ID != id || res.Ref != "third" || res.State != protocol.StateSucceeded {
		t.Fatalf("result %+v", res)
	}
	// A finished request answers with its result at once.
	c2.sendJSON(map[string]any{"type": "get", "id": id})
	if res := clientNext[*protocol.ClientResult](c2); res.ID != id || string(res.Result) != `"late"` {
		t.Fatalf("result %+v", res)
	}
	c2.sendJSON(map[string]any{"type": "get", "ref": "nope", "id": "r_missing"})
	if er := clientNext[*protocol.ClientError](c2); er.Code != protocol.CodeNotFound || er.Ref != "nope" || er.ID != "r_missing" {
		t.Fatalf("error %+v", er)
	}
}

func TestClientCancel(t *testing.T) {
	e := newEnv(t)
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "call", "ref": "q", "device": "dev1", "method": "sys.ping"})
	id := clientNext[*protocol.ClientAccepted](c).ID
	c.sendJSON(map[string]any{"type": "cancel", "ref": "stop", "id": id})
	// The waiter from the call and the cancel's answer are one result.
	res := clientNext[*protocol.ClientResult](c)
	if res.ID != id || res.State != protocol.StateCanceled || res.Error == nil || res.Error.Code != protocol.CodeCanceled {
		t.Fatalf("result %+v", res)
	}
	// Canceling a finished request reports how it ended.
	c.sendJSON(map[string]any{"type": "cancel", "id": id})
	if res := clientNext[*protocol.ClientResult](c); res.State != protocol.StateCanceled {
		t.Fatalf("result %+v", res)
	}
}

func TestClientSubscribeEventsAndPresence(t *testing.T) {
	e := newEnv(t)
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
	if p := clientNext[*protocol.ClientPresence](c); p.Device != "dev1" || p.Online {
		t.Fatalf("presence %+v, want offline", p)
	}
	a := dialAgent(e, e.token)
	if p := clientNext[*protocol.ClientPresence](c); !p.Online || p.LastSeen == nil {
		t.Fatalf("presence %+v, want online", p)
	}
	a.send(&protocol.Event{Seq: 1, Name: "gpio.edge", Data: json.RawMessage(`{"pin":"GPIO27"}`)})
	nextAs[*protocol.Ack](a)
	ev := clientNext[*protocol.ClientEvent](c)
	if ev.Device != "dev1" || ev.Seq != 1 || ev.Name != "gpio.edge" || string(ev.Data) != `{"pin":"GPIO27"}` || ev.Time.IsZero() {
		t.Fatalf("event %+v", ev)
	}
	a.send(&protocol.Event{Seq: 2, Name: "gpio.edge"})
	nextAs[*protocol.Ack](a)
	if ev := clientNext[*protocol.ClientEvent](c); ev.Seq != 2 {
		t.Fatalf("event %+v", ev)
	}

	// A second subscriber resumes after seq 1: it gets 2 replayed.
	c2 := dialClient(e)
	c2.sendJSON(map[string]any{"type": "subscribe", "device": "dev1", "after": 1})
	clientNext[*protocol.ClientPresence](c2)
	if ev := clientNext[*protocol.ClientEvent](c2); ev.Seq != 2 {
		t.Fatalf("replayed %+v", ev)
	}
	c2.sendJSON(map[string]any{"type": "unsubscribe", "device": "dev1"})
	c2.sendJSON(map[string]any{"type": "subscribe", "ref": "s", "device": "nope"})
	if er := clientNext[*protocol.ClientError](c2); er.Code != protocol.CodeNotFound || er.Ref != "s" {
		t.Fatalf("error %+v", er)
	}

	a.close()
	if p := clientNext[*protocol.ClientPresence](c); p.Online {
		t.Fatalf("presence %+v, want offline", p)
	}
}

func TestClientBadFrames(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClientMaxFrame = 2048 })
	c := dialClient(e)
	tests := []struct {
		frame string
		code  string
		ref   string
	}{
		{`not json`, protocol.CodeBadFrame, ""},
		{`{"type":"fly","ref":"f"}`, protocol.CodeUnknownType, "f"},
		{`{"type":"call","ref":"p","device":"dev1","method":"bad method"}`, protocol.CodeBadParams, "p"},
		{`{"type":"call","ref":"u","device":"nodev","method":"sys.ping"}`, protocol.CodeNotFound, "u"},
		{`{"type":"call","ref":"t","device":"dev1","method":"m","timeout":"-3s"}`, protocol.CodeBadParams, "t"},
	}
	for _, tt := range tests {
		c.sendRaw([]byte(tt.frame))
		er := clientNext[*protocol.ClientError](c)
		if er.Code != tt.code || er.Ref != tt.ref {
			t.Errorf("%s: error %+v, want code %s ref %q", tt.frame, er, tt.code, tt.ref)
		}
	}
	// The connection is still usable.
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
	clientNext[*protocol.ClientPresence](c)

	// Oversize frames end it with 1009.
	c.sendRaw([]byte(`{"type":"call","device":"dev1","method":"m","params":"` + strings.Repeat("x", 3000) + `"}`)) // one WebSocket frame: over the limit, under gorilla's write buffer
	if er := clientNext[*protocol.ClientError](c); er.Code != protocol.CodeTooLarge {
		t.Fatalf("error %+v", er)
	}
	if code := c.closed(); code != websocket.CloseMessageTooBig {
		t.Fatalf("close %d, want 1009", code)
	}

	// A stream of garbage ends with 1008.
	c2 := dialClient(e)
	for i := 0; i <= maxBadFrames; i++ {
		c2.sendRaw([]byte(`{`))
	}
	for i := 0; i < maxBadFrames; i++ {
		clientNext[*protocol.ClientError](c2)
	}
	if code := c2.closed(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close %d, want 1008", code)
	}

	// Binary frames end it with 1003.
	c3 := dialClient(e)
	c3.conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2})
	if code := c3.closed(); code != websocket.CloseUnsupportedData {
		t.Fatalf("close %d, want 1003", code)
	}
}

func TestClientOriginChecked(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowedOrigins = []string{"https://App.Example.com:443"} })
	host := strings.TrimPrefix(e.ts.URL, "http://")
	tests := []struct {
		origin string
		want   int
	}{
		{"", http.StatusSwitchingProtocols}, // a service, not a browser
		{"http://" + host, http.StatusSwitchingProtocols},
		{"https://app.example.com", http.StatusSwitchingProtocols},
		{"https://evil.example", http.StatusForbidden},
		{"https://app.example.com.evil.example", http.StatusForbidden},
		{"http://app.example.com", http.StatusForbidden}, // scheme matters
		{"null", http.StatusForbidden},
	}
	for _, tt := range tests {
		h := keyHeader(e.key)
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		conn, resp, err := dialClientRaw(e, h, "")
		if conn != nil {
			conn.Close()
		}
		if resp == nil {
			t.Fatalf("origin %q: %v", tt.origin, err)
		}
		if resp.StatusCode != tt.want {
			t.Errorf("origin %q: status %d, want %d", tt.origin, resp.StatusCode, tt.want)
		}
	}
}

func TestParseOrigin(t *testing.T) {
	for in, want := range map[string]string{
		"https://App.example.com":     "https://app.example.com",
		"https://app.example.com:443": "https://app.example.com",
		"http://localhost:3000/":      "http://localhost:3000",
		"http://[::1]:80":             "http://[::1]",
	} {
		if got, err := ParseOrigin(in); err != nil || got != want {
			t.Errorf("ParseOrigin(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"app.example.com", "ftp://x", "https://x/path", "https://", "*", "https://u@x"} {
		if _, err := ParseOrigin(bad); err == nil {
			t.Errorf("ParseOrigin(%q) accepted", bad)
		}
	}
}

func buyTicket(t *testing.T, e *env) ticketAnswer {
	t.Helper()
	st, body := e.do("POST", "/v1/tickets", nil)
	if st != http.StatusCreated {
		t.Fatalf("tickets: %d %s", st, body)
	}
	return decode[ticketAnswer](t, body)
}

func TestClientTickets(t *testing.T) {
	logs := &logBuffer{}
	e := newEnv(t, func(c *Config) {
		c.TicketTTL = 300 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	host := strings.TrimPrefix(e.ts.URL, "http://")
	browser := http.Header{"Origin": {"http://" + host}}

	// Tickets are for key holders only.
	req, _ := http.NewRequest("POST", e.ts.URL+"/v1/tickets", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ticket without key: %d", resp.StatusCode)
	}

	tk := buyTicket(t, e)
	if !strings.HasPrefix(tk.Ticket, ticketPrefix) || len(tk.Ticket) < 40 || time.Until(tk.Expires) > time.Second || tk.ExpiresIn != 300 {
		t.Fatalf("ticket %+v", tk)
	}
	conn, _, err := dialClientRaw(e, browser, "ticket="+url.QueryEscape(tk.Ticket))
	if err != nil {
		t.Fatalf("dial with ticket: %v", err)
	}
	c := startClient(t, conn)
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
	clientNext[*protocol.ClientPresence](c)

	refused := func(what, query string) {
		t.Helper()
		conn, resp, _ := dialClientRaw(e, browser, query)
		if conn != nil {
			conn.Close()
			t.Fatalf("%s: connected", what)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: %v, want 401", what, resp)
		}
	}
	refused("used ticket", "ticket="+url.QueryEscape(tk.Ticket))
	refused("no credentials", "")
	refused("made-up ticket", "ticket=tkt_AAAA")
	refused("key as ticket", "ticket="+url.QueryEscape(e.key))

	old := buyTicket(t, e)
	time.Sleep(400 * time.Millisecond) // past the TTL; only a clock can show expiry
	refused("expired ticket", "ticket="+url.QueryEscape(old.Ticket))

	// A foreign page holding a valid ticket still cannot connect.
	fresh := buyTicket(t, e)
	conn, resp, _ = dialClientRaw(e, http.Header{"Origin": {"https://evil.example"}}, "ticket="+url.QueryEscape(fresh.Ticket))
	if conn != nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin with ticket: %v", resp)
	}

	c.close()
	e.stop()
	out := logs.String()
	for _, secret := range []string{e.key, tk.Ticket, old.Ticket, fresh.Ticket} {
		if strings.Contains(out, secret) {
			t.Fatalf("a secret reached the log:\n%s", out)
		}
	}
	if !strings.Contains(out, "ticket=REDACTED") || !strings.Contains(out, "uri=/v1/client") {
		t.Fatalf("access log lacks the redacted upgrade line:\n%s", out)
	}
}

func TestTicketStore(t *testing.T) {
	var ts ticketStore
	now := time.Now()
	a, _, err := ts.issue(clientID{name: "web"}, time.Second, 2, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := ts.issue(clientID{name: "web"}, time.Second, 2, now)
	if a == b {
		t.Fatal("two tickets alike")
	}
	if _, _, err := ts.issue(clientID{name: "web"}, time.Second, 2, now); !errors.Is(err, errTooManyTickets) {
		t.Fatalf("third ticket: %v", err)
	}
	// Expired tickets make room.
	if _, _, err := ts.issue(clientID{name: "web"}, time.Second, 2, now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, ok := ts.redeem(a, now); ok {
		t.Fatal("a was purged, yet redeemed")
	}
	c, _, _ := ts.issue(clientID{name: "svc"}, time.Second, 3, now)
	if id, ok := ts.redeem(c, now); !ok || id.name != "svc" {
		t.Fatalf("redeem: %q %v", id.name, ok)
	}
	if _, ok := ts.redeem(c, now); ok {
		t.Fatal("redeemed twice")
	}
}

func TestRedactedURI(t *testing.T) {
	u, _ := url.Parse("/v1/client?ticket=tkt_secret&Token=t&wait=5s")
	got := redactedURI(u)
	if strings.Contains(got, "secret") || strings.Contains(got, "=t&") || !strings.Contains(got, "wait=5s") {
		t.Fatalf("redacted %q", got)
	}
}

// A client that does not read is cut off; it never blocks the relay.
func TestClientSlowConsumerDisconnected(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClientSendQueue = 1; c.WriteTimeout = 50 * time.Millisecond })
	c := &clientConn{cfg: &e.srv.cfg, log: e.srv.log, send: make(chan *[]byte, 1), quit: make(chan struct{})}
	if !c.push(&protocol.ClientPresence{Device: "d"}) {
		t.Fatal("first push refused")
	}
	if c.push(&protocol.ClientPresence{Device: "d"}) {
		t.Fatal("push into a full queue succeeded")
	}
	select {
	case <-c.quit:
	default:
		t.Fatal("slow client not stopped")
	}
	if c.closeCode != closeSlowClient {
		t.Fatalf("close code %d", c.closeCode)
	}
}

func TestClientClosedOnShutdown(t *testing.T) {
	e := newEnv(t)
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "call", "device": "dev1", "method": "sys.ping"})
	clientNext[*protocol.ClientAccepted](c) // a waiter is running
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
	clientNext[*protocol.ClientPresence](c) // and a follower
	e.stopRun()
	<-e.runDone
	if code := c.closed(); code != websocket.CloseGoingAway {
		t.Fatalf("close %d, want 1001", code)
	}
}

func TestClientUpgradeRefusals(t *testing.T) {
	e := newEnv(t)
	// Not an upgrade.
	st, body := e.do("GET", protocol.ClientPath, nil)
	if st != http.StatusBadRequest {
		t.Fatalf("plain GET: %d %s", st, body)
	}
	_, resp, _ := dialClientRaw(e, keyHeader("tck_wrong"), "")
	if resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong key: %v", resp)
	}
}

func TestDashboardServed(t *testing.T) {
	e := newEnv(t)
	for path, ctype := range map[string]string{"/": "text/html", "/app.js": "text/javascript", "/style.css": "text/css"} {
		resp, err := http.Get(e.ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || len(b) == 0 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Fatalf("%s: CSP %q", path, csp)
		}
		if path == "/" && (bytes.Contains(b, []byte("<script>")) || bytes.Contains(b, []byte("http://")) || bytes.Contains(b, []byte("https://"))) {
			t.Fatal("index.html has inline script or external URLs")
		}
	}
	resp, err := http.Get(e.ts.URL + "/nope.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown asset: %d", resp.StatusCode)
	}
}

// A key limited to some devices reaches only those over the WebSocket too.
func TestClientScopeApplies(t *testing.T) {
	e := newEnv(t)
	key, err := AddClientScoped(e.cfg.DataDir, "narrow", Scope{Devices: []string{"other*"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := e.submit(protocol.Submit{Method: "sys.ping"}) // by the unrestricted key
	conn, _, err := dialClientRaw(e, keyHeader(key), "")
	if err != nil {
		t.Fatal(err)
	}
	c := startClient(t, conn)
	for _, f := range []map[string]any{
		{"type": "subscribe", "ref": "1", "device": "dev1"},
		{"type": "call", "ref": "2", "device": "dev1", "method": "sys.ping"},
		{"type": "get", "ref": "3", "id": rec.ID},
		{"type": "cancel", "ref": "4", "id": rec.ID},
	} {
		c.sendJSON(f)
		if er := clientNext[*protocol.ClientError](c); er.Code != codeForbidden || er.Ref != f["ref"] {
			t.Fatalf("%v: %+v, want forbidden", f, er)
		}
	}
	if got := e.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Fatalf("out-of-scope cancel changed the request: %s", got.State)
	}
}

// A get on a connection that already follows as many requests as it may
// is refused with too_many, and no accepted goes before the refusal: an
// accepted is always followed by a result.
func TestClientGetAtTheFollowLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QueueLimit = 2 * maxClientWatches })
	c := dialClient(e)
	for i := range maxClientWatches {
		c.sendJSON(map[string]any{"type": "call", "ref": fmt.Sprint("c", i), "device": "dev1", "method": "m"})
	}
	for range maxClientWatches {
		clientNext[*protocol.ClientAccepted](c)
	}
	rec := e.submit(protocol.Submit{Method: "m"})
	c.sendJSON(map[string]any{"type": "get", "ref": "g", "id": rec.ID})
	if f := clientNext[*protocol.ClientError](c); f.Ref != "g" || f.Code != codeTooMany {
		t.Fatalf("error %+v", f)
	}
}

// sendEventsUpTo sends events seq from..to from a and waits for each ack.
func sendEventsUpTo(t *testing.T, a *testAgent, from, to uint64) {
	t.Helper()
	for s := from; s <= to; s++ {
		a.send(&protocol.Event{Seq: s, Name: "e"})
		nextAs[*protocol.Ack](a)
	}
}

// clientEvents reads event frames for d and returns their seqs.
func clientEvents(c *wsClient, d time.Duration) (seqs []uint64) {
	deadline := time.After(d)
	for {
		select {
		case b := <-c.frames:
			if m, _ := protocol.DecodePush(b, 0); m != nil {
				if ev, ok := m.(*protocol.ClientEvent); ok {
					seqs = append(seqs, ev.Seq)
				}
			}
		case <-deadline:
			return seqs
		}
	}
}

// An unsubscribe stops a replay under way; a subscription made again
// replays from where it asks, after the last one's stream has ended, so
// the two never interleave.
func TestClientUnsubscribeStopsReplay(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EventsKept = 3000 })
	a := dialAgent(e, e.token)
	const n = 2000
	sendEventsUpTo(t, a, 1, n)

	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1", "after": 0})
	c.sendJSON(map[string]any{"type": "unsubscribe", "device": "dev1"})
	if got := clientEvents(c, 300*time.Millisecond); len(got) >= n {
		t.Fatalf("the whole replay of %d events came after the unsubscribe", len(got))
	}

	d := dialClient(e)
	d.sendJSON(map[string]any{"type": "subscribe", "device": "dev1", "after": 0})
	d.sendJSON(map[string]any{"type": "unsubscribe", "device": "dev1"})
	d.sendJSON(map[string]any{"type": "subscribe", "device": "dev1", "after": 0})
	got := clientEvents(d, time.Second)
	last := slices.Index(got, 1)
	for i := range got {
		if got[i] == 1 {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("no replay")
	}
	for i := 1; i < last; i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("the first stream is out of order at %d: %v", i, got[max(0, i-3):i+1])
		}
	}
	for i, s := range got[last:] {
		if s != uint64(i+1) {
			t.Fatalf("the second stream, event %d: seq %d (streams interleaved)", i, s)
		}
	}
	if len(got[last:]) != n {
		t.Fatalf("the second stream has %d events, want %d", len(got[last:]), n)
	}
}

// The first presence of a subscription says the seq its stream goes on
// from, so that a client that saw no event yet can resume after a
// reconnect without missing the events sent while it was away.
func TestClientPresenceSaysWhereTheStreamStarts(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	sendEventsUpTo(t, a, 1, 3)
	c := dialClient(e)
	c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
	p := clientNext[*protocol.ClientPresence](c)
	if p.Seq == nil || *p.Seq != 3 {
		t.Fatalf("first presence %+v, want seq 3", p)
	}
	c.close()

	sendEventsUpTo(t, a, 4, 5) // while the client is away
	d := dialClient(e)
	d.sendJSON(map[string]any{"type": "subscribe", "device": "dev1", "after": *p.Seq})
	if p := clientNext[*protocol.ClientPresence](d); p.Seq == nil || *p.Seq != 3 {
		t.Fatalf("first presence of the resumed stream %+v", p)
	}
	for _, want := range []uint64{4, 5} {
		if ev := clientNext[*protocol.ClientEvent](d); ev.Seq != want {
			t.Fatalf("event %d, want %d", ev.Seq, want)
		}
	}
}

// A subscribe repeated at once is answered after the subscription's first
// presence, the one that says where the stream starts, never before it:
// both come from the device's follower, in order.
func TestClientRepeatedSubscribeAnsweredInOrder(t *testing.T) {
	e := newEnv(t)
	for i := range 20 {
		c := dialClient(e)
		c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
		c.sendJSON(map[string]any{"type": "subscribe", "device": "dev1"})
		if p := clientNext[*protocol.ClientPresence](c); p.Seq == nil {
			t.Fatalf("round %d: first presence %+v has no seq", i, p)
		}
		if p := clientNext[*protocol.ClientPresence](c); p.Seq != nil {
			t.Fatalf("round %d: repeated presence %+v", i, p)
		}
		c.close()
	}
}
