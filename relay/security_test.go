package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/protocol"
)

// tlsRelay is a relay served over a real listener, so Serve's TLS path is
// the one under test.
type tlsRelay struct {
	srv  *Server
	addr string
	stop func()
}

func serveRelay(t *testing.T, cfg Config) *tlsRelay {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tlsRelay{srv: srv, addr: ln.Addr().String(), stop: sync.OnceFunc(serveOn(srv, ln))}
	t.Cleanup(r.stop)
	return r
}

// serveOn serves srv on ln until the returned function is called, which
// stops serving and closes srv.
func serveOn(srv *Server, ln net.Listener) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx, ln)
	}()
	return func() {
		cancel()
		<-done
		srv.Close()
	}
}

// logBuffer collects logs (an agent's, a relay's) for a test to read while
// they are written.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type nopExec struct{}

func (nopExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

// runAgent runs a real agent until the test ends.
func runAgent(t *testing.T, cfg agent.Config) (*agent.Agent, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.BackoffInitial = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.HandshakeTimeout = 2 * time.Second
	cfg.ShutdownGrace = 200 * time.Millisecond
	a, err := agent.New(cfg, nopExec{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	return a, logs
}

func TestTLSAgentVerifiesRelay(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA := newTestCA(t, "relay CA"), newTestCA(t, "other CA")
	caFile, otherFile := ca.file(dir, "ca"), otherCA.file(dir, "other")

	tests := []struct {
		name    string
		caFile  string
		expired bool
		want    string // "" means the agent connects; else a log fragment
	}{
		{"valid", caFile, false, ""},
		{"wrong CA", otherFile, false, "certificate signed by unknown authority"},
		{"expired", caFile, true, "expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			cfg.TLSCert, cfg.TLSKey = ca.files(t.TempDir(), "relay", leafOpts{cn: "relay", expired: tc.expired})
			tok, err := AddDevice(cfg.DataDir, "dev1")
			if err != nil {
				t.Fatal(err)
			}
			r := serveRelay(t, cfg)
			tlsCfg, err := agent.TLSConfig(tc.caFile, "", "")
			if err != nil {
				t.Fatal(err)
			}
			a, logs := runAgent(t, agent.Config{Relay: "wss://" + r.addr, Token: tok, TLS: tlsCfg})
			if tc.want == "" {
				waitFor(t, "agent to connect over TLS", func() bool { return a.Status().Connected })
				return
			}
			waitFor(t, "TLS refusal in the agent's log", func() bool { return strings.Contains(logs.String(), tc.want) })
			if a.Status().Connected {
				t.Fatal("agent connected to a relay it must not trust")
			}
		})
	}
}

func TestAgentRefusesPlainWSToRemoteHost(t *testing.T) {
	for _, tc := range []struct {
		url      string
		insecure bool
		ok       bool
	}{
		{"ws://relay.example.com:8080", false, false},
		{"ws://10.0.0.5:8080", false, false},
		{"ws://10.0.0.5:8080", true, true},
		{"ws://127.0.0.1:8080", false, true},
		{"ws://[::1]:8080", false, true},
		{"ws://localhost:8080", false, true},
		{"wss://relay.example.com", false, true},
	} {
		_, err := agent.New(agent.Config{Relay: tc.url, Token: "tdv_x", Insecure: tc.insecure}, nopExec{})
		if (err == nil) != tc.ok {
			t.Errorf("%s insecure=%v: err %v, want ok=%v", tc.url, tc.insecure, err, tc.ok)
		}
	}
}

// dialTLS opens an agent WebSocket over TLS and returns the welcome.
func dialTLS(t *testing.T, addr string, tc *tls.Config, token string) (*websocket.Conn, *protocol.Welcome, int, error) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}, TLSClientConfig: tc, HandshakeTimeout: waitLimit}
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	conn, resp, err := d.Dial("wss://"+addr+"/v1/agent", h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return nil, nil, status, err
	}
	t.Cleanup(func() { conn.Close() })
	b, _ := protocol.Encode(&protocol.Hello{Agent: "t"})
	conn.WriteMessage(websocket.TextMessage, b)
	conn.SetReadDeadline(time.Now().Add(waitLimit))
	_, frame, err := conn.ReadMessage()
	if err != nil {
		return nil, nil, 0, err
	}
	m, err := protocol.Decode(frame, 0)
	if err != nil {
		return nil, nil, 0, err
	}
	w, ok := m.(*protocol.Welcome)
	if !ok {
		return nil, nil, 0, fmt.Errorf("got %s, want welcome", frame)
	}
	return conn, w, 101, nil
}

func TestMutualTLSIdentity(t *testing.T) {
	ca, devCA, rogueCA := newTestCA(t, "relay CA"), newTestCA(t, "device CA"), newTestCA(t, "rogue CA")
	cfg := testConfig(t.TempDir())
	cfg.TLSCert, cfg.TLSKey = ca.files(t.TempDir(), "relay", leafOpts{cn: "relay"})
	cfg.ClientCA = devCA.file(t.TempDir(), "devices")
	tok, _ := AddDevice(cfg.DataDir, "pi-7")
	AddDevice(cfg.DataDir, "pi-8")
	r := serveRelay(t, cfg)

	tests := []struct {
		name   string
		cert   *tls.Certificate
		token  string
		device string // "" means refused
		status int
	}{
		{"CN names the device", ptr(devCA.clientCert(leafOpts{cn: "pi-7"})), "", "pi-7", 0},
		{"SAN names the device", ptr(devCA.clientCert(leafOpts{cn: "board", dns: []string{"pi-8"}})), "", "pi-8", 0},
		{"unregistered name", ptr(devCA.clientCert(leafOpts{cn: "ghost"})), "", "", 401},
		{"two devices named", ptr(devCA.clientCert(leafOpts{cn: "pi-7", dns: []string{"pi-8"}})), "", "", 401},
		{"certificate from another CA", ptr(rogueCA.clientCert(leafOpts{cn: "pi-7"})), "", "", 0},
		{"expired certificate", ptr(devCA.clientCert(leafOpts{cn: "pi-7", expired: true})), "", "", 0},
		{"no certificate, no token", nil, "", "", 401},
		{"token still works", nil, tok, "pi-7", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &tls.Config{RootCAs: ca.pool()}
			if tc.cert != nil {
				c.Certificates = []tls.Certificate{*tc.cert}
			}
			conn, w, status, err := dialTLS(t, r.addr, c, tc.token)
			if tc.device != "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if w.Device != tc.device {
					t.Fatalf("mapped to %q, want %q", w.Device, tc.device)
				}
				conn.Close()
				return
			}
			if err == nil {
				t.Fatalf("accepted as %s", w.Device)
			}
			if tc.status != 0 && status != tc.status {
				t.Fatalf("status %d (%v), want %d", status, err, tc.status)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestTLSReloadKeepsConnections(t *testing.T) {
	ca := newTestCA(t, "relay CA")
	dir := t.TempDir()
	cfg := testConfig(t.TempDir())
	cfg.TLSCert, cfg.TLSKey = ca.files(dir, "relay", leafOpts{cn: "first"})
	tok, _ := AddDevice(cfg.DataDir, "dev1")
	key, _ := AddClient(cfg.DataDir, "web")
	r := serveRelay(t, cfg)

	tc := &tls.Config{RootCAs: ca.pool()}
	conn, w, _, err := dialTLS(t, r.addr, tc, tok)
	if err != nil {
		t.Fatal(err)
	}
	// Renew: new files in place, then SIGHUP's reload.
	ca.files(dir, "relay", leafOpts{cn: "second"})
	if err := r.srv.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	probe, err := tls.Dial("tcp", r.addr, tc)
	if err != nil {
		t.Fatal(err)
	}
	cn := probe.ConnectionState().PeerCertificates[0].Subject.CommonName
	probe.Close()
	if cn != "second" {
		t.Fatalf("after reload the relay presents %q, want the renewed certificate", cn)
	}

	// The session from before the reload still works end to end.
	b, _ := protocol.Encode(&protocol.Pull{N: 1})
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest("POST", "https://"+r.addr+"/v1/devices/dev1/requests", strings.NewReader(`{"method":"sys.ping"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	conn.SetReadDeadline(time.Now().Add(waitLimit))
	_, frame, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("session %s dropped by the reload: %v", w.Session, err)
	}
	if m, _ := protocol.Decode(frame, 0); m == nil || m.MsgType() != protocol.TypeRequest {
		t.Fatalf("got %s, want a request", frame)
	}

	// A broken renewal keeps the working certificate.
	os.WriteFile(cfg.TLSCert, []byte("garbage"), 0o600)
	if err := r.srv.ReloadTLS(); err == nil {
		t.Fatal("reload of a broken certificate succeeded")
	}
	if probe, err = tls.Dial("tcp", r.addr, tc); err != nil {
		t.Fatalf("relay stopped serving TLS after a failed reload: %v", err)
	}
	probe.Close()
}

func TestAgentEndpointRefusesBrowsers(t *testing.T) {
	e := newEnv(t)
	h := http.Header{"Authorization": {"Bearer " + e.token}, "Origin": {"https://evil.example"}}
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}}
	conn, resp, err := d.Dial(e.wsURL(), h)
	if err == nil {
		conn.Close()
		t.Fatal("agent upgrade with a foreign Origin succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %v, want 403", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if got := apiCode(t, body); got != "forbidden" {
		t.Fatalf("code %q", got)
	}
}

func TestRotationWithoutReconnect(t *testing.T) {
	e := newEnv(t)
	a := connect(e, e.token)
	a.send(&protocol.Hello{Agent: "t"})
	welcome := nextAs[*protocol.Welcome](a)

	if err := e.srv.RotateDevice("dev1", 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	rot := nextAs[*protocol.Rotate](a)
	if !strings.HasPrefix(rot.Token, DeviceTokenPrefix) || rot.Token == e.token || rot.GraceMs != 50 {
		t.Fatalf("rotate %+v", rot)
	}
	// Until the agent confirms, both tokens work.
	for _, tok := range []string{e.token, rot.Token} {
		if _, ok := e.srv.creds.authDevice(tok, time.Now()); !ok {
			t.Fatalf("token refused before confirmation")
		}
	}
	a.send(&protocol.Rotated{})
	waitFor(t, "rotation to be recorded", func() bool {
		c, _ := readCredentials(e.cfg.DataDir)
		return findDevice(c, "dev1").SHA256 == hashSecret(rot.Token)
	})
	// The old token stops working once the grace period is over.
	waitFor(t, "old token to expire", func() bool {
		_, ok := e.srv.creds.authDevice(e.token, time.Now())
		return !ok
	})
	if _, resp, err := dialRaw(e, e.token, []string{protocol.Version}); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("old token after grace: %v", err)
	}

	// Same connection, same session: work still flows, and the session
	// (now standing on the new token) survives the old token's expiry.
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "sys.ping"})
	if req := nextAs[*protocol.Request](a); req.ID != rec.ID {
		t.Fatalf("request %s, want %s", req.ID, rec.ID)
	}
	if info := e.device("dev1"); !info.Online {
		t.Fatal("device went offline during rotation")
	}
	b := dialAgent(e, rot.Token)
	b.close()
	_ = welcome
}

func TestRotationConfirmedByReconnect(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	if err := e.srv.RotateDevice("dev1", time.Hour); err != nil {
		t.Fatal(err)
	}
	rot := nextAs[*protocol.Rotate](a)
	a.close() // stored it, crashed before confirming
	b := dialAgent(e, rot.Token)
	defer b.close()
	c, _ := readCredentials(e.cfg.DataDir)
	if d := findDevice(c, "dev1"); d.SHA256 != hashSecret(rot.Token) || d.Rotation.Requested != nil {
		t.Fatalf("reconnect with the new token did not confirm: %+v", d.Rotation)
	}
	b.quiet(50 * time.Millisecond) // no second rotation
}

// An agent that reconnects with a rotation's new token while that
// confirmation cannot be recorded (here the credentials lock cannot be
// taken) is told to come back, 503 with Retry-After, rather than let in on
// a token the next rotation could supersede; once the store works, the
// same token confirms the rotation.
func TestRotationConfirmationNotRecordedIsRetried(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	if err := e.srv.RotateDevice("dev1", time.Hour); err != nil {
		t.Fatal(err)
	}
	rot := nextAs[*protocol.Rotate](a)
	a.close()

	lock := filepath.Join(e.cfg.DataDir, credentialsLock)
	if err := os.Remove(lock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Mkdir(lock, 0o700); err != nil { // a lock file that cannot be opened
		t.Fatal(err)
	}
	_, resp, err := dialRaw(e, rot.Token, []string{protocol.Version})
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("reconnect while the confirmation cannot be recorded: %v %v", resp, err)
	}
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	b := dialAgent(e, rot.Token)
	defer b.close()
	c, _ := readCredentials(e.cfg.DataDir)
	if d := findDevice(c, "dev1"); d.SHA256 != hashSecret(rot.Token) || d.Rotation.Requested != nil {
		t.Fatalf("the retry did not confirm: %+v", d.Rotation)
	}
}

func TestRevocationClosesSession(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	// The admin command path: only the file changes; the relay notices.
	if err := RevokeDevice(e.cfg.DataDir, "dev1"); err != nil {
		t.Fatal(err)
	}
	if code := a.closed(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d, want 1008", code)
	}
	if _, resp, err := dialRaw(e, e.token, []string{protocol.Version}); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("revoked token: %v", err)
	}
	if st, _ := e.do("POST", "/v1/devices/dev1/requests", `{"method":"sys.ping"}`); st != http.StatusNotFound {
		t.Fatalf("submit to a revoked device: %d", st)
	}
}

func TestClientScopes(t *testing.T) {
	e := newEnv(t)
	AddDevice(e.cfg.DataDir, "dev2")
	sc, err := ParseScope("dev1", "sys.*, gpio.read")
	if err != nil {
		t.Fatal(err)
	}
	limited, err := AddClientScoped(e.cfg.DataDir, "kiosk", sc)
	if err != nil {
		t.Fatal(err)
	}
	other := e.submit(protocol.Submit{Method: "gpio.write"}) // by the unrestricted key
	st, body := e.do("POST", "/v1/devices/dev2/requests", `{"method":"sys.ping"}`)
	if st != http.StatusAccepted {
		t.Fatalf("%d %s", st, body)
	}
	otherDev := decode[protocol.Record](t, body)

	as := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequest(method, e.ts.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+limited)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	tests := []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/devices/dev1/requests", `{"method":"sys.ping"}`, 202},
		{"POST", "/v1/devices/dev1/requests", `{"method":"gpio.read"}`, 202},
		{"POST", "/v1/devices/dev1/requests", `{"method":"gpio.write"}`, 403},
		{"POST", "/v1/devices/dev2/requests", `{"method":"sys.ping"}`, 403},
		{"POST", "/v1/devices/nosuch/requests", `{"method":"sys.ping"}`, 403},
		{"GET", "/v1/devices/dev1", "", 200},
		{"GET", "/v1/devices/dev2", "", 403},
		{"GET", "/v1/devices/dev2/events", "", 403},
		{"GET", "/v1/requests/" + other.ID, "", 403},
		{"DELETE", "/v1/requests/" + other.ID, "", 403},
		{"GET", "/v1/requests/" + otherDev.ID, "", 403},
	}
	for _, tc := range tests {
		st, body := as(tc.method, tc.path, tc.body)
		if st != tc.status {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, st, body, tc.status)
			continue
		}
		if st == 403 && apiCode(t, body) != "forbidden" {
			t.Errorf("%s %s: code %s", tc.method, tc.path, body)
		}
	}
	st, body = as("GET", "/v1/devices", "")
	var list struct{ Devices []protocol.DeviceInfo }
	json.Unmarshal(body, &list)
	if st != 200 || len(list.Devices) != 1 || list.Devices[0].ID != "dev1" {
		t.Fatalf("device list for a scoped key: %d %s", st, body)
	}
	// The shared check the client WebSocket uses.
	if err := e.srv.Authorize(WithClient(context.Background(), "kiosk"), "dev2", ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Authorize: %v", err)
	}
	if _, err := e.srv.Submit(WithClient(context.Background(), "kiosk"), "dev1", protocol.Submit{Method: "pwm.set"}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Submit: %v", err)
	}
}

func TestScopePatterns(t *testing.T) {
	sc, err := ParseScope("pi-*,lab-[0-9]", "gpio.*")
	if err != nil {
		t.Fatal(err)
	}
	for dev, want := range map[string]bool{"pi-1": true, "pi-": true, "lab-3": true, "lab-10": false, "xpi-1": false} {
		if sc.AllowsDevice(dev) != want {
			t.Errorf("device %s: %v", dev, !want)
		}
	}
	for m, want := range map[string]bool{"gpio.read": true, "sys.info": false, "gpio": false} {
		if sc.AllowsMethod(m) != want {
			t.Errorf("method %s: %v", m, !want)
		}
	}
	for _, empty := range []string{" ", ",", " , "} {
		if _, err := ParseScope(empty, ""); err == nil {
			t.Errorf("devices %q, which names no pattern, gave no error (it would mean no limit)", empty)
		}
	}
	if _, err := ParseScope("[", ""); err == nil {
		t.Error("bad pattern accepted")
	}
	if (Scope{}).Restricted() || !(Scope{}).AllowsDevice("any") {
		t.Error("empty scope must allow everything")
	}
}

func TestDeviceSeesOnlyItsOwnRequests(t *testing.T) {
	e := newEnv(t)
	tok2, _ := AddDevice(e.cfg.DataDir, "dev2")
	a1 := dialAgent(e, e.token)
	a2 := dialAgent(e, tok2)
	a2.send(&protocol.Pull{N: 5})
	rec := e.submit(protocol.Submit{Method: "sys.ping"})
	a2.quiet(50 * time.Millisecond) // dev1's request never reaches dev2
	// dev2 forging a result for it is acknowledged and ignored.
	a2.send(&protocol.Result{ID: rec.ID, State: protocol.StateSucceeded, Value: json.RawMessage(`{"forged":true}`)})
	nextAs[*protocol.Ack](a2)
	if got := e.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Fatalf("dev2 changed dev1's request: %+v", got)
	}
	a1.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a1); req.ID != rec.ID {
		t.Fatalf("dev1 got %s", req.ID)
	}
}

func TestOversizeFrameCloses1009(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 4096 })
	a := dialAgent(e, e.token)
	big := fmt.Sprintf(`{"type":"event","seq":1,"name":"x","data":"%s"}`, strings.Repeat("a", 4096))
	a.sendRaw([]byte(big))
	if f := nextAs[*protocol.Error](a); f.Code != protocol.CodeTooLarge {
		t.Fatalf("error %+v", f)
	}
	if code := a.closed(); code != websocket.CloseMessageTooBig {
		t.Fatalf("close %d, want 1009", code)
	}
}

func TestSubmitRateLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.ClientRate, c.ClientBurst = 0.5, 2
		c.DeviceRate, c.DeviceBurst = 0.5, 3
	})
	for i := 0; i < 2; i++ {
		e.submit(protocol.Submit{Method: "sys.ping"})
	}
	check429 := func(st int, hdr http.Header, body []byte, who string) {
		t.Helper()
		if st != http.StatusTooManyRequests || apiCode(t, body) != "rate_limited" || !strings.Contains(string(body), who) {
			t.Fatalf("got %d %s, want 429 rate_limited for %s", st, body, who)
		}
		if s, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || s < 1 || s > 3 {
			t.Fatalf("Retry-After %q", hdr.Get("Retry-After"))
		}
	}
	post := func(key string) (int, http.Header, []byte) {
		req, _ := http.NewRequest("POST", e.ts.URL+"/v1/devices/dev1/requests", strings.NewReader(`{"method":"sys.ping"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	st, hdr, body := post(e.key)
	check429(st, hdr, body, "client web")
	// Another client still has its own budget, but the device's is
	// nearly spent: one more, then the device limit answers.
	key2, _ := AddClient(e.cfg.DataDir, "other")
	if st, _, body := post(key2); st != http.StatusAccepted {
		t.Fatalf("second client: %d %s", st, body)
	}
	st, hdr, body = post(key2)
	check429(st, hdr, body, "device dev1")
}

func TestAdmissionAnswers503(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdmitRate, c.AdmitBurst = 0.2, 1 })
	a := dialAgent(e, e.token)
	defer a.close()
	conn, resp, err := dialRaw(e, e.token, []string{protocol.Version})
	if err == nil {
		conn.Close()
		t.Fatal("second upgrade admitted")
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	// Refused clients are told to come back one after the other.
	_, resp2, _ := dialRaw(e, e.token, []string{protocol.Version})
	r1, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	r2, _ := strconv.Atoi(resp2.Header.Get("Retry-After"))
	if r2 <= r1 {
		t.Fatalf("Retry-After %d then %d: refused clients are not spread out", r1, r2)
	}
}

func TestMaxConns(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxConns = 1 })
	tok2, _ := AddDevice(e.cfg.DataDir, "dev2")
	a := dialAgent(e, e.token)
	_, resp, err := dialRaw(e, tok2, []string{protocol.Version})
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second session at MaxConns=1: %v", err)
	}
	a.close()
	waitFor(t, "slot to free", func() bool { return e.srv.guard.admit.conns.Load() == 0 })
	b := dialAgent(e, tok2)
	b.close()
}

// TestAgentHonoursRetryAfter runs a real agent into the admission limit:
// it must come back no earlier than the relay asked, and then connect.
func TestAgentHonoursRetryAfter(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdmitRate, c.AdmitBurst = 1, 1 })
	tok2, _ := AddDevice(e.cfg.DataDir, "dev2")
	a := dialAgent(e, e.token) // spends the burst
	defer a.close()

	var mu sync.Mutex
	var refused, admitted []time.Time
	onAdmit := func(now time.Time) {
		mu.Lock()
		defer mu.Unlock()
		admitted = append(admitted, now)
	}
	onRefuse := func(now time.Time) {
		mu.Lock()
		defer mu.Unlock()
		refused = append(refused, now)
	}
	e.srv.guard.admit.onAdmit.Store(&onAdmit)
	e.srv.guard.admit.onRefuse.Store(&onRefuse)
	ag, _ := runAgent(t, agent.Config{Relay: e.wsURL(), Token: tok2})
	waitFor(t, "agent to get in", func() bool { return ag.Status().Connected })
	mu.Lock()
	defer mu.Unlock()
	if len(refused) == 0 || len(admitted) == 0 {
		t.Fatalf("refused %d, admitted %d: the agent was never turned away", len(refused), len(admitted))
	}
	// Every retry honoured the Retry-After (>= 1 s) of the refusal before.
	for i := 1; i < len(refused); i++ {
		if gap := refused[i].Sub(refused[i-1]); gap < 900*time.Millisecond {
			t.Errorf("retry %d came after %v, before Retry-After", i, gap)
		}
	}
	if gap := admitted[len(admitted)-1].Sub(refused[len(refused)-1]); gap < 900*time.Millisecond {
		t.Errorf("admitted %v after the last 503, before its Retry-After", gap)
	}
}

// TestSlowConsumerDisconnected fills a non-reading agent's socket: the
// relay's writer hits its write timeout and drops that session, while
// another device keeps being served throughout.
func TestSlowConsumerDisconnected(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QueueLimit = 1000 })
	tok2, _ := AddDevice(e.cfg.DataDir, "dev2")
	tinyBuf := func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}, NetDial: (&net.Dialer{Control: tinyBuf}).Dial}
	slow, _, err := d.Dial(e.wsURL(), http.Header{"Authorization": {"Bearer " + e.token}})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	for _, m := range []protocol.Message{&protocol.Hello{Agent: "slow"}, &protocol.Pull{N: 1000}} {
		b, _ := protocol.Encode(m)
		slow.WriteMessage(websocket.TextMessage, b)
	}
	// Never read again.
	fast := dialAgent(e, tok2)
	fast.send(&protocol.Pull{N: 1000})

	param := json.RawMessage(`"` + strings.Repeat("x", 60<<10) + `"`)
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; e.device("dev1").Online; i++ {
		if time.Now().After(deadline) {
			t.Fatal("slow agent never disconnected")
		}
		if i < 400 {
			e.submit(protocol.Submit{Method: "sys.ping", Params: param})
		} else {
			time.Sleep(10 * time.Millisecond)
		}
		if i%20 == 0 {
			st, body := e.do("POST", "/v1/devices/dev2/requests", `{"method":"sys.ping"}`)
			if st != http.StatusAccepted {
				t.Fatalf("dev2 submit: %d %s", st, body)
			}
			nextAs[*protocol.Request](fast) // served without waiting for dev1
		}
	}
}

// A revoked client key stops working everywhere: its REST calls get 401,
// its open WebSocket has its calls refused and is closed, and a ticket it
// bought before opens nothing. Its scope was narrow; a revoked name must
// not fall back to an unrestricted one.
func TestRevokedClientKey(t *testing.T) {
	e := newEnv(t)
	key, err := AddClientScoped(e.cfg.DataDir, "narrow", Scope{Devices: []string{"other*"}})
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := dialClientRaw(e, keyHeader(key), "")
	if err != nil {
		t.Fatal(err)
	}
	c := startClient(t, conn)
	call := func(ref string) {
		c.sendJSON(map[string]any{"type": "call", "ref": ref, "device": "dev1", "method": "m"})
		if f := clientNext[*protocol.ClientError](c); f.Ref != ref || f.Code != codeForbidden {
			t.Fatalf("call %s: %+v", ref, f)
		}
	}
	call("before")
	ticket := issueTicket(t, e, key)

	if err := RevokeClient(e.cfg.DataDir, "narrow"); err != nil {
		t.Fatal(err)
	}
	// A call now is refused, never taken as unscoped.
	refusedAndClosed(t, e, c, ticket, "a revoked client")
	req, _ := http.NewRequest("GET", e.ts.URL+"/v1/devices", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("REST with a revoked key: %d", resp.StatusCode)
	}
	if err := RevokeClient(e.cfg.DataDir, "narrow"); !errors.Is(err, ErrUnknownClient) {
		t.Fatalf("revoking twice: %v", err)
	}
}

// A client key replaced under the same name (revoke, then add again, as
// an operator does for a leaked key, before the relay looked) stops
// working like a revoked one: the connection the old key opened has its
// calls refused and is closed, and a ticket the old key bought opens
// nothing. Neither may go on as the client the new key stands for.
func TestReplacedClientKey(t *testing.T) {
	e := newEnv(t)
	old, err := AddClient(e.cfg.DataDir, "app")
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := dialClientRaw(e, keyHeader(old), "")
	if err != nil {
		t.Fatal(err)
	}
	c := startClient(t, conn)
	ticket := issueTicket(t, e, old)

	// One write of the file, so that no sweep sees the name missing.
	fresh, err := newSecret(ClientKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	err = updateCredentials(e.cfg.DataDir, func(cr *credentials) error {
		for i := range cr.Clients {
			if cr.Clients[i].Name == "app" {
				cr.Clients[i].SHA256 = hashSecret(fresh)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	refusedAndClosed(t, e, c, ticket, "a replaced key")
	if st, body := e.doAs(fresh, nil, "GET", "/v1/devices", nil); st != http.StatusOK {
		t.Fatalf("the new key: %d %s", st, body)
	}
}

// refusedAndClosed checks that the client connection c, whose key (who)
// is no longer valid, has a call refused and is closed with 1008, and that
// ticket, bought with that key, opens nothing.
func refusedAndClosed(t *testing.T, e *env, c *wsClient, ticket, who string) {
	t.Helper()
	// The connection may be closed already (a sweep closes it); the write
	// then fails.
	c.conn.WriteJSON(map[string]any{"type": "call", "ref": "after", "device": "dev1", "method": "m"})
	for done := false; !done; {
		select {
		case b := <-c.frames:
			m, err := protocol.DecodePush(b, 0)
			if f, ok := m.(*protocol.ClientError); err != nil || !ok || f.Code != codeForbidden {
				t.Fatalf("a call from %s: %s", who, b)
			}
		case <-c.done:
			done = true
		case <-time.After(waitLimit):
			t.Fatalf("the connection of %s stays open", who)
		}
	}
	if code := c.closed(); code != websocket.ClosePolicyViolation {
		t.Fatalf("close code %d, want %d", code, websocket.ClosePolicyViolation)
	}
	if _, resp, err := dialClientRaw(e, nil, "ticket="+ticket); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ticket of %s: %v %v", who, resp, err)
	}
}

// issueTicket buys a browser ticket with key.
func issueTicket(t *testing.T, e *env, key string) string {
	t.Helper()
	req, _ := http.NewRequest("POST", e.ts.URL+"/v1/tickets", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tk ticketAnswer
	if err := json.NewDecoder(resp.Body).Decode(&tk); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("ticket: %d %v", resp.StatusCode, err)
	}
	return tk.Ticket
}

// Refused upgrades are told to come back at the admission rate, one slot
// each, within maxRetryAfter. A storm bigger than that wait admits is
// spread over it again rather than all told its end, and after a quiet
// spell the next refusal is told about a second, whatever came before.
func TestAdmissionRetrySpread(t *testing.T) {
	a := newAdmission(Config{AdmitRate: 500, AdmitBurst: 1, MaxConns: 10})
	now := time.Now()
	a.take(now) // the burst
	at := map[int64]int{}
	for range 100_000 {
		d, ok := a.take(now)
		if ok || d < time.Second || d > maxRetryAfter {
			t.Fatalf("refusal told %v (admitted %v)", d, ok)
		}
		at[int64(d/time.Second)]++
	}
	// 500 a second over ~60 s is ~30,000 slots: each second of the wait
	// gets about 100,000/60 of them, none all.
	for s, n := range at {
		if n > 2*100_000/59 {
			t.Errorf("%d of 100,000 refusals told to come back in %d s", n, s)
		}
	}
	later := now.Add(2 * time.Minute)
	a.take(later) // the bucket has refilled: admitted
	if d, ok := a.take(later); ok || d > 2*time.Second {
		t.Fatalf("after a quiet spell: told %v (admitted %v)", d, ok)
	}
}

// One client holds at most ClientConns connections: one more is refused
// before the upgrade, while other clients still connect, and a closed
// connection frees its place.
func TestClientConnectionsBounded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClientConns = 3 })
	var conns []*websocket.Conn
	for range 3 {
		conn, _, err := dialClientRaw(e, keyHeader(e.key), "")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	_, resp, err := dialClientRaw(e, keyHeader(e.key), "")
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a fourth connection: %v %v, want 429 with Retry-After", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	if apiCode(t, body) != codeTooMany {
		t.Errorf("refusal %s, want code too_many", body)
	}
	expectSamples(t, scrape(t, e), map[string]float64{`tether_relay_refusals_total{endpoint="client",reason="client_conns"}`: 1})
	other, err := AddClient(e.cfg.DataDir, "other")
	if err != nil {
		t.Fatal(err)
	}
	oc, _, err := dialClientRaw(e, keyHeader(other), "")
	if err != nil {
		t.Fatalf("another client: %v", err)
	}
	oc.Close()
	conns[0].Close()
	waitFor(t, "a freed place", func() bool {
		conn, _, err := dialClientRaw(e, keyHeader(e.key), "")
		if err != nil {
			return false
		}
		conns[0] = conn
		return true
	})
	for _, c := range conns {
		c.Close()
	}
}
