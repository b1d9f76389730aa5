package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/tetherhq/tether/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds every wait in these tests; it is generous so a loaded
// CI machine does not flake, and only reached when a test fails.
const waitLimit = 5 * time.Second

func testConfig(dir string) Config {
	return Config{
		DataDir:        dir,
		PingPeriod:     200 * time.Millisecond,
		HelloTimeout:   time.Second,
		WriteTimeout:   time.Second,
		SweepInterval:  5 * time.Millisecond,
		DefaultTimeout: 10 * time.Second,
		MaxWait:        waitLimit,
	}
}

// env is a relay served by httptest with one client and one device.
type env struct {
	t     *testing.T
	cfg   Config
	srv   *Server
	ts    *httptest.Server
	key   string // client key
	token string // token of device "dev1"

	stopRun context.CancelFunc
	runDone chan struct{}
}

func newEnv(t *testing.T, tweak ...func(*Config)) *env {
	t.Helper()
	cfg := testConfig(t.TempDir())
	for _, f := range tweak {
		f(&cfg)
	}
	e := &env{t: t, cfg: cfg}
	var err error
	if e.key, err = AddClient(cfg.DataDir, "web"); err != nil {
		t.Fatal(err)
	}
	if e.token, err = AddDevice(cfg.DataDir, "dev1"); err != nil {
		t.Fatal(err)
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *env) start() {
	e.t.Helper()
	srv, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, e.stopRun, e.runDone = srv, cancel, make(chan struct{})
	go func() {
		defer close(e.runDone)
		srv.Run(ctx)
	}()
	e.ts = httptest.NewServer(srv.Handler())
}

// stop shuts the relay down the way ListenAndServe does; it may be called
// more than once.
func (e *env) stop() {
	if e.srv == nil {
		return
	}
	e.stopRun()
	<-e.runDone
	e.ts.Close()
	if err := e.srv.Close(); err != nil {
		e.t.Error(err)
	}
	e.srv = nil
}

func (e *env) restart() {
	e.stop()
	e.start()
}

// crash stops the relay as a power cut would, its store abandoned without
// a clean close, and starts it again on the same data directory.
func (e *env) crash() {
	e.stopRun()
	<-e.runDone
	e.ts.Close()
	e.srv.st.abandon()
	e.srv.creds.close()
	e.srv = nil
	e.start()
}

func (e *env) wsURL() string { return "ws" + strings.TrimPrefix(e.ts.URL, "http") + "/v1/agent" }

// do sends an authenticated API request and returns status and body.
func (e *env) do(method, path string, body any) (int, []byte) {
	e.t.Helper()
	return e.doAs(e.key, nil, method, path, body)
}

// doAs is do with client key ck and the headers in hdr.
func (e *env) doAs(ck string, hdr http.Header, method, path string, body any) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case string:
		r = strings.NewReader(b)
	case io.Reader:
		r = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.ts.URL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+ck)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// submit posts a request to dev1 and returns the record; it must be 202.
func (e *env) submit(sub protocol.Submit) protocol.Record {
	e.t.Helper()
	st, body := e.do("POST", "/v1/devices/dev1/requests", sub)
	if st != http.StatusAccepted {
		e.t.Fatalf("submit: status %d: %s", st, body)
	}
	return decode[protocol.Record](e.t, body)
}

// record fetches a request, long-polling up to wait.
func (e *env) record(id, wait string) protocol.Record {
	e.t.Helper()
	path := "/v1/requests/" + id
	if wait != "" {
		path += "?wait=" + wait
	}
	st, body := e.do("GET", path, nil)
	if st != http.StatusOK {
		e.t.Fatalf("get %s: status %d: %s", id, st, body)
	}
	return decode[protocol.Record](e.t, body)
}

func (e *env) device(id string) protocol.DeviceInfo {
	e.t.Helper()
	st, body := e.do("GET", "/v1/devices/"+id, nil)
	if st != http.StatusOK {
		e.t.Fatalf("device %s: status %d: %s", id, st, body)
	}
	return decode[protocol.DeviceInfo](e.t, body)
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, b, err)
	}
	return v
}

func apiCode(t *testing.T, b []byte) string {
	t.Helper()
	return decode[protocol.APIError](t, b).Error.Code
}

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testAgent is a minimal tether.v1 agent speaking through gorilla directly.
// Its reader goroutine queues every frame it gets; the test reads them
// with next.
type testAgent struct {
	t      *testing.T
	conn   *websocket.Conn
	frames chan []byte
	done   chan struct{}
	stop   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	readErr error // why the reader stopped
}

func dialRaw(e *env, token string, protos []string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{Subprotocols: protos, HandshakeTimeout: waitLimit}
	return d.Dial(e.wsURL(), h)
}

// connect dials without sending hello. setup runs before the reader starts.
func connect(e *env, token string, setup ...func(*websocket.Conn)) *testAgent {
	e.t.Helper()
	conn, _, err := dialRaw(e, token, []string{protocol.Version})
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	for _, f := range setup {
		f(conn)
	}
	a := &testAgent{t: e.t, conn: conn, frames: make(chan []byte, 256), done: make(chan struct{}), stop: make(chan struct{})}
	go a.readLoop()
	e.t.Cleanup(a.close)
	return a
}

// dialAgent connects, says hello and checks the welcome.
func dialAgent(e *env, token string, running ...string) *testAgent {
	e.t.Helper()
	a := connect(e, token)
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock", Methods: []string{"sys.ping"}, Running: running})
	w, ok := a.next().(*protocol.Welcome)
	if !ok {
		e.t.Fatal("first frame is not welcome")
	}
	if w.Device == "" || w.Session == "" || w.MaxFrame != e.srv.cfg.MaxFrame {
		e.t.Fatalf("bad welcome %+v", w)
	}
	return a
}

// deliveredRequest connects an agent with one credit, submits a request
// for it and reads the request's delivery.
func deliveredRequest(e *env) (*testAgent, protocol.Record) {
	e.t.Helper()
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "m"})
	nextAs[*protocol.Request](a)
	return a, rec
}

func (a *testAgent) readLoop() {
	defer close(a.done)
	for {
		_, b, err := a.conn.ReadMessage()
		if err != nil {
			a.mu.Lock()
			a.readErr = err
			a.mu.Unlock()
			return
		}
		select {
		case a.frames <- b:
		case <-a.stop:
			return
		}
	}
}

func (a *testAgent) send(m protocol.Message) {
	a.t.Helper()
	b, err := protocol.Encode(m)
	if err != nil {
		a.t.Fatal(err)
	}
	a.sendRaw(b)
}

func (a *testAgent) sendRaw(b []byte) {
	a.t.Helper()
	if err := a.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		a.t.Fatalf("agent write: %v", err)
	}
}

// next returns the next frame, failing the test after waitLimit.
func (a *testAgent) next() protocol.Message {
	a.t.Helper()
	var b []byte
	select {
	case b = <-a.frames:
	case <-a.done:
		// Frames read before the connection ended still count.
		select {
		case b = <-a.frames:
		default:
			a.t.Fatalf("connection ended while waiting for a frame: %v", a.err())
		}
	case <-time.After(waitLimit):
		a.t.Fatal("timed out waiting for a frame")
	}
	m, err := protocol.Decode(b, 1<<20)
	if err != nil {
		a.t.Fatalf("agent got undecodable frame %s: %v", b, err)
	}
	return m
}

func nextAs[T protocol.Message](a *testAgent) T {
	a.t.Helper()
	m := a.next()
	v, ok := m.(T)
	if !ok {
		a.t.Fatalf("got %T %+v, want %T", m, m, v)
	}
	return v
}

// quiet asserts that no frame arrives for d. It is the one place where a
// test waits a fixed time, because absence can only be observed that way.
func (a *testAgent) quiet(d time.Duration) {
	a.t.Helper()
	select {
	case b := <-a.frames:
		a.t.Fatalf("unexpected frame %s", b)
	case <-time.After(d):
	}
}

func (a *testAgent) err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readErr
}

// closed waits until the relay closed the connection and returns the close
// code it sent.
func (a *testAgent) closed() int {
	a.t.Helper()
	select {
	case <-a.done:
	case <-time.After(waitLimit):
		a.t.Fatal("connection not closed")
	}
	var ce *websocket.CloseError
	if !errors.As(a.err(), &ce) {
		a.t.Fatalf("connection ended without a close frame: %v", a.err())
	}
	return ce.Code
}

// close drops the connection without a close handshake, like a crash.
func (a *testAgent) close() {
	a.once.Do(func() { close(a.stop) })
	a.conn.Close()
	<-a.done
}

// result sends a succeeded result and waits for its ack.
func (a *testAgent) succeed(id string, value string) {
	a.t.Helper()
	a.send(&protocol.Result{ID: id, State: protocol.StateSucceeded, Value: json.RawMessage(value)})
	ack := nextAs[*protocol.Ack](a)
	if len(ack.IDs) != 1 || ack.IDs[0] != id {
		a.t.Fatalf("ack %+v, want ids [%s]", ack, id)
	}
}
