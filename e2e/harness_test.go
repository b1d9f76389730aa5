package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupBinaries()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testRelay is an in-process relay serving on a loopback port.
type testRelay struct {
	t    *testing.T
	dir  string
	addr string
	key  string
	srv  *relay.Server
	stop func()
}

func relayConfig(dir string) relay.Config {
	cfg := relay.DefaultConfig()
	cfg.DataDir = dir
	cfg.PingPeriod = 200 * time.Millisecond
	cfg.HelloTimeout = 2 * time.Second
	cfg.SweepInterval = 20 * time.Millisecond
	cfg.ShutdownTimeout = 2 * time.Second
	return cfg
}

// startRelay starts a relay on addr ("" for any free port) with data in dir.
func startRelay(t *testing.T, dir, addr string, tweak func(*relay.Config)) *testRelay {
	t.Helper()
	cfg := relayConfig(dir)
	cfg.Logger = testLogger(t)
	if tweak != nil {
		tweak(&cfg)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a relay just stopped may linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ctx, ln)
	}()
	r := &testRelay{t: t, dir: dir, addr: ln.Addr().String(), srv: srv}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			srv.Close()
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (r *testRelay) url() string   { return "http://" + r.addr }
func (r *testRelay) wsURL() string { return "ws://" + r.addr }

func addDevice(t *testing.T, dir, id string) string {
	t.Helper()
	tok, err := relay.AddDevice(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func addClient(t *testing.T, dir, name string) string {
	t.Helper()
	key, err := relay.AddClient(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// testAgent is an in-process agent.
type testAgent struct {
	a    *agent.Agent
	stop func()
}

func agentConfig(relayURL, token string) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Relay = relayURL
	cfg.Token = token
	cfg.BackoffInitial = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.HealthyAfter = 100 * time.Millisecond
	cfg.HandshakeTimeout = 2 * time.Second
	cfg.ShutdownGrace = 2 * time.Second
	return cfg
}

func startAgent(t *testing.T, cfg agent.Config, exec agent.Executor) *testAgent {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	a, err := agent.New(cfg, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Run(ctx)
	}()
	ta := &testAgent{a: a}
	var once sync.Once
	ta.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			a.Close()
		})
	}
	t.Cleanup(ta.stop)
	return ta
}

// mockBoard opens a simulated board closed at the end of the test.
func mockBoard(t *testing.T, opts mock.Options) agent.Executor {
	t.Helper()
	b, err := mock.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// api is a minimal device-A client.
type api struct {
	t    *testing.T
	base string
	key  string
}

func (c *api) client() *http.Client { return http.DefaultClient }

func (c *api) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			rd = strings.NewReader(b)
		default:
			j, _ := json.Marshal(b)
			rd = bytes.NewReader(j)
		}
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (c *api) submit(device, method string, params any, query string) (int, protocol.Record) {
	c.t.Helper()
	sub := map[string]any{"method": method, "params": params}
	code, data := c.do("POST", "/v1/devices/"+device+"/requests"+query, sub)
	var rec protocol.Record
	if code < 300 {
		if err := json.Unmarshal(data, &rec); err != nil {
			c.t.Fatalf("submit answer %s: %v", data, err)
		}
	}
	return code, rec
}

// call submits and waits for the finished request.
func (c *api) call(device, method string, params any) protocol.Record {
	c.t.Helper()
	code, rec := c.submit(device, method, params, "?wait=10s")
	if code != 200 && code != 202 {
		c.t.Fatalf("submit %s %s: status %d", device, method, code)
	}
	return c.wait(rec.ID, 10*time.Second)
}

func (c *api) get(id string) protocol.Record {
	c.t.Helper()
	code, data := c.do("GET", "/v1/requests/"+id, nil)
	if code != 200 {
		c.t.Fatalf("get %s: %d %s", id, code, data)
	}
	var rec protocol.Record
	json.Unmarshal(data, &rec)
	return rec
}

// wait long-polls until the request is terminal or d passes.
func (c *api) wait(id string, d time.Duration) protocol.Record {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		code, data := c.do("GET", "/v1/requests/"+id+"?wait=2s", nil)
		if code != 200 {
			c.t.Fatalf("get %s: %d %s", id, code, data)
		}
		var rec protocol.Record
		json.Unmarshal(data, &rec)
		if protocol.Terminal(rec.State) {
			return rec
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("request %s still %s after %v", id, rec.State, d)
		}
	}
}

func (c *api) device(id string) protocol.DeviceInfo {
	c.t.Helper()
	code, data := c.do("GET", "/v1/devices/"+id, nil)
	if code != 200 {
		c.t.Fatalf("device %s: %d %s", id, code, data)
	}
	var d protocol.DeviceInfo
	json.Unmarshal(data, &d)
	return d
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantState(t *testing.T, rec protocol.Record, state, code string) {
	t.Helper()
	if rec.State != state {
		t.Fatalf("request %s (%s): state %s (error %v), want %s", rec.ID, rec.Method, rec.State, rec.Error, state)
	}
	if code != "" && (rec.Error == nil || rec.Error.Code != code) {
		t.Fatalf("request %s: error %v, want code %s", rec.ID, rec.Error, code)
	}
}
