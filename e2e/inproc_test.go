package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/internal/faultproxy"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

// relayWithDevice starts a relay with device "pi-1" registered and returns
// it with a client for its API and the device's token.
func relayWithDevice(t *testing.T) (*testRelay, *api, string) {
	t.Helper()
	dir := t.TempDir()
	tok := addDevice(t, dir, "pi-1")
	key := addClient(t, dir, "app")
	r := startRelay(t, dir, "", nil)
	return r, &api{t: t, base: r.url(), key: key}, tok
}

// setup starts a relay, registers device "pi-1" and a client, and connects
// an agent on the simulated board.
func setup(t *testing.T, opts mock.Options, tweak func(*agent.Config)) (*testRelay, *api, *testAgent) {
	t.Helper()
	r, c, tok := relayWithDevice(t)
	cfg := agentConfig(r.wsURL(), tok)
	if tweak != nil {
		tweak(&cfg)
	}
	a := startAgent(t, cfg, mockBoard(t, opts))
	eventually(t, 5*time.Second, "device online", func() bool { return c.device("pi-1").Online })
	return r, c, a
}

func TestCallSucceeds(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	rec := c.call("pi-1", "sys.ping", map[string]any{"hello": "pi"})
	wantState(t, rec, protocol.StateSucceeded, "")
	if !strings.Contains(string(rec.Result), `"hello":"pi"`) {
		t.Fatalf("ping echoed %s", rec.Result)
	}
	wantState(t, c.call("pi-1", "gpio.write", map[string]any{"pin": "GPIO17", "level": "high"}), protocol.StateSucceeded, "")
	rec = c.call("pi-1", "gpio.read", map[string]any{"pin": "GPIO27"})
	wantState(t, rec, protocol.StateSucceeded, "")
	if !strings.Contains(string(rec.Result), `"high"`) {
		t.Fatalf("GPIO27 after writing GPIO17 high: %s", rec.Result)
	}
	rec = c.call("pi-1", "sys.info", nil)
	wantState(t, rec, protocol.StateSucceeded, "")
	if rec.Attempts != 1 || rec.Finished == nil {
		t.Fatalf("record %+v", rec)
	}
}

func TestWaitReturnsFinishedRequest(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	code, rec := c.submit("pi-1", "sys.ping", "x", "?wait=5s")
	if code != 200 {
		t.Fatalf("status %d, want 200 with the finished request", code)
	}
	wantState(t, rec, protocol.StateSucceeded, "")
	// Without wait the answer comes at once: 202 and the request is live.
	// (A request that ends while its submit is committed is answered 200.)
	code, rec = c.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "2s"}, "")
	if code != 202 || protocol.Terminal(rec.State) {
		t.Fatalf("status %d state %s, want 202 and a live request", code, rec.State)
	}
}

func TestBadRequestsFailWithCodes(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	tests := []struct {
		method string
		params any
		code   string
	}{
		{"gpio.explode", nil, protocol.CodeUnknownMethod},
		{"gpio.read", map[string]any{"pin": "GPIO99"}, protocol.CodeNotFound},
		{"gpio.write", map[string]any{"pin": "GPIO27", "level": "high"}, protocol.CodeNotPermitted},
		{"gpio.write", map[string]any{"pin": "GPIO17", "level": "sideways"}, protocol.CodeBadParams},
		{"gpio.read", "not an object", protocol.CodeBadParams},
		{"i2c.tx", map[string]any{"bus": "1", "addr": 0x20, "read": 1}, protocol.CodeNotPermitted},
		{"i2c.tx", map[string]any{"bus": "1", "addr": 0x48, "write": "abc"}, protocol.CodeBadParams},
	}
	for _, tt := range tests {
		t.Run(tt.method+"/"+tt.code, func(t *testing.T) {
			wantState(t, c.call("pi-1", tt.method, tt.params), protocol.StateFailed, tt.code)
		})
	}
	// The agent is still fine.
	wantState(t, c.call("pi-1", "sys.ping", nil), protocol.StateSucceeded, "")
}

func TestOfflineDeviceRunsOnConnect(t *testing.T) {
	r, c, tok := relayWithDevice(t)
	if c.device("pi-1").Online {
		t.Fatal("device online before any agent")
	}
	code, rec := c.submit("pi-1", "gpio.write", map[string]any{"pin": "GPIO5", "level": "high"}, "?wait=100ms")
	if code != 202 || rec.State != protocol.StateQueued {
		t.Fatalf("status %d state %s, want 202 queued", code, rec.State)
	}
	startAgent(t, agentConfig(r.wsURL(), tok), mockBoard(t, mock.Options{}))
	wantState(t, c.wait(rec.ID, 5*time.Second), protocol.StateSucceeded, "")
}

func TestRelayRestartKeepsQueueAndAgentReconnects(t *testing.T) {
	dir := t.TempDir()
	tok := addDevice(t, dir, "pi-1")
	key := addClient(t, dir, "app")
	r := startRelay(t, dir, "", nil)
	addr := r.addr
	c := &api{t: t, base: r.url(), key: key}
	startAgent(t, agentConfig(r.wsURL(), tok), mockBoard(t, mock.Options{Delay: 300 * time.Millisecond}))
	eventually(t, 5*time.Second, "online", func() bool { return c.device("pi-1").Online })

	var ids []string
	for i := 0; i < 5; i++ {
		_, rec := c.submit("pi-1", "sys.ping", i, "")
		ids = append(ids, rec.ID)
	}
	r.stop()
	r2 := startRelay(t, dir, addr, nil)
	c.base = r2.url()
	for _, id := range ids {
		wantState(t, c.wait(id, 10*time.Second), protocol.StateSucceeded, "")
	}
	eventually(t, 5*time.Second, "agent back online", func() bool { return c.device("pi-1").Online })
}

// A session cut while a request runs must still end with exactly one
// recorded result and one execution.
func TestDroppedConnectionMidRequest(t *testing.T) {
	r, c, tok := relayWithDevice(t)
	p, err := faultproxy.Listen("127.0.0.1:0", r.addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	execLog := filepath.Join(t.TempDir(), "exec.log")
	startAgent(t, agentConfig("ws://"+p.Addr(), tok), mockBoard(t, mock.Options{Delay: 400 * time.Millisecond, ExecLog: execLog}))
	eventually(t, 5*time.Second, "online", func() bool { return c.device("pi-1").Online })

	_, rec := c.submit("pi-1", "gpio.write", map[string]any{"pin": "GPIO6", "level": "high"}, "")
	eventually(t, 5*time.Second, "delivered", func() bool { return c.get(rec.ID).State == protocol.StateDelivered })
	if p.Reset() == 0 {
		t.Fatal("no connection to cut")
	}
	got := c.wait(rec.ID, 10*time.Second)
	wantState(t, got, protocol.StateSucceeded, "")
	data, _ := os.ReadFile(execLog)
	if n := strings.Count(string(data), rec.ID); n != 1 {
		t.Fatalf("request executed %d times:\n%s", n, data)
	}
}

func TestCancelQueuedAndRunning(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	// A long pulse keeps the single worker busy, so the next request queues.
	_, running := c.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "20s"}, "")
	eventually(t, 5*time.Second, "pulse delivered", func() bool { return c.get(running.ID).State == protocol.StateDelivered })
	_, queued := c.submit("pi-1", "sys.ping", nil, "")

	code, data := c.do("DELETE", "/v1/requests/"+queued.ID, nil)
	if code >= 300 {
		t.Fatalf("cancel queued: %d %s", code, data)
	}
	wantState(t, c.get(queued.ID), protocol.StateCanceled, protocol.CodeCanceled)

	start := time.Now()
	code, data = c.do("DELETE", "/v1/requests/"+running.ID, nil)
	if code >= 300 {
		t.Fatalf("cancel running: %d %s", code, data)
	}
	wantState(t, c.wait(running.ID, 5*time.Second), protocol.StateCanceled, protocol.CodeCanceled)
	if time.Since(start) > 5*time.Second {
		t.Fatal("cancel did not reach the running handler")
	}
	// Canceling a finished request is refused.
	if code, _ := c.do("DELETE", "/v1/requests/"+running.ID, nil); code != 409 {
		t.Fatalf("cancel of a finished request: %d, want 409", code)
	}
	wantState(t, c.call("pi-1", "sys.ping", nil), protocol.StateSucceeded, "")
}

func TestExpiry(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	_, busy := c.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "1s"}, "")
	eventually(t, 5*time.Second, "pulse delivered", func() bool { return c.get(busy.ID).State == protocol.StateDelivered })
	code, data := c.do("POST", "/v1/devices/pi-1/requests", map[string]any{"method": "sys.ping", "timeout": "150ms"})
	if code != 202 {
		t.Fatalf("submit: %d %s", code, data)
	}
	var rec protocol.Record
	json.Unmarshal(data, &rec)
	wantState(t, c.wait(rec.ID, 5*time.Second), protocol.StateExpired, protocol.CodeExpired)
	// A request that runs past its deadline fails with timeout.
	code, data = c.do("POST", "/v1/devices/pi-1/requests?wait=5s", map[string]any{
		"method": "gpio.pulse", "params": map[string]any{"pin": "GPIO6", "level": "high", "duration": "3s"}, "timeout": "1500ms"})
	json.Unmarshal(data, &rec)
	wantState(t, c.wait(rec.ID, 5*time.Second), protocol.StateFailed, protocol.CodeTimeout)
}

// concurrency wraps an executor and records the most requests it ever ran
// at once.
type concurrency struct {
	agent.Executor
	now, peak atomic.Int32
}

func (c *concurrency) Execute(ctx context.Context, req *protocol.Request) (json.RawMessage, error) {
	n := c.now.Add(1)
	defer c.now.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return c.Executor.Execute(ctx, req)
}

func TestOneCreditNeverMoreThanOneRequest(t *testing.T) {
	r, c, tok := relayWithDevice(t)
	conc := &concurrency{Executor: mockBoard(t, mock.Options{Delay: 30 * time.Millisecond})}
	ag := startAgent(t, agentConfig(r.wsURL(), tok), conc)

	var ids []string
	for i := 0; i < 10; i++ {
		_, rec := c.submit("pi-1", "sys.ping", i, "")
		ids = append(ids, rec.ID)
	}
	// The agent's own count of requests it holds (received, not finished)
	// is sampled while the queue drains; the board counts what runs.
	maxHeld := 0
	for _, id := range ids {
		for !protocol.Terminal(c.get(id).State) {
			maxHeld = max(maxHeld, ag.a.Status().Running)
		}
		wantState(t, c.get(id), protocol.StateSucceeded, "")
	}
	if p := conc.peak.Load(); p != 1 || maxHeld > 1 {
		t.Fatalf("with 1 credit: peak %d running on the board, the agent held %d at once", p, maxHeld)
	}
}

func TestManyCreditsRunConcurrently(t *testing.T) {
	r, c, tok := relayWithDevice(t)
	conc := &concurrency{Executor: mockBoard(t, mock.Options{Delay: 200 * time.Millisecond})}
	cfg := agentConfig(r.wsURL(), tok)
	cfg.Credits = 4
	startAgent(t, cfg, conc)
	var ids []string
	for i := 0; i < 12; i++ {
		_, rec := c.submit("pi-1", "sys.ping", i, "")
		ids = append(ids, rec.ID)
	}
	for _, id := range ids {
		wantState(t, c.wait(id, 10*time.Second), protocol.StateSucceeded, "")
	}
	if p := conc.peak.Load(); p < 2 || p > 4 {
		t.Fatalf("peak concurrency %d with 4 credits", p)
	}
}

func TestEightDevicesIndependent(t *testing.T) {
	dir := t.TempDir()
	key := addClient(t, dir, "app")
	var toks []string
	for i := 0; i < 8; i++ {
		toks = append(toks, addDevice(t, dir, fmt.Sprintf("pi-%d", i)))
	}
	r := startRelay(t, dir, "", nil)
	c := &api{t: t, base: r.url(), key: key}
	for i, tok := range toks {
		// Device 0 is slow; the others must not wait for it.
		delay := time.Duration(0)
		if i == 0 {
			delay = 3 * time.Second
		}
		startAgent(t, agentConfig(r.wsURL(), tok), mockBoard(t, mock.Options{Delay: delay}))
	}
	for i := range toks {
		id := fmt.Sprintf("pi-%d", i)
		eventually(t, 5*time.Second, id+" online", func() bool { return c.device(id).Online })
	}
	_, slow := c.submit("pi-0", "sys.ping", nil, "")
	start := time.Now()
	var wg sync.WaitGroup
	for i := 1; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				rec := c.call(fmt.Sprintf("pi-%d", i), "gpio.write", map[string]any{"pin": "GPIO5", "level": []string{"low", "high"}[j%2]})
				if rec.State != protocol.StateSucceeded || rec.Device != fmt.Sprintf("pi-%d", i) {
					t.Errorf("pi-%d: %+v", i, rec)
				}
			}
		}()
	}
	wg.Wait()
	if c.get(slow.ID).State == protocol.StateSucceeded && time.Since(start) < 3*time.Second {
		t.Fatal("slow device finished too early: the delay is not applied")
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("35 calls to 7 free devices took %v: they waited for the busy one", elapsed)
	}
	wantState(t, c.wait(slow.ID, 10*time.Second), protocol.StateSucceeded, "")
}

func TestAgentRestartReportsInterrupted(t *testing.T) {
	r, c, tok := relayWithDevice(t)
	state := t.TempDir()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	cfg := agentConfig(r.wsURL(), tok)
	cfg.StateDir = state
	cfg.ShutdownGrace = 50 * time.Millisecond
	a := startAgent(t, cfg, mockBoard(t, mock.Options{ExecLog: execLog}))
	eventually(t, 5*time.Second, "online", func() bool { return c.device("pi-1").Online })
	_, rec := c.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "10s"}, "")
	eventually(t, 5*time.Second, "pulse running", func() bool { return a.a.Status().Running == 1 })
	a.stop() // shutdown grace runs out: the pulse is cut short
	got := c.wait(rec.ID, 5*time.Second)
	wantState(t, got, protocol.StateFailed, protocol.CodeInterrupted)

	// A new agent on the same journal answers a redelivery from it.
	a2 := startAgent(t, cfg, mockBoard(t, mock.Options{ExecLog: execLog}))
	defer a2.stop()
	wantState(t, c.call("pi-1", "sys.ping", nil), protocol.StateSucceeded, "")
	data, _ := os.ReadFile(execLog)
	if n := strings.Count(string(data), rec.ID); n != 1 {
		t.Fatalf("pulse executed %d times", n)
	}
}

func TestWrongTokenAndUnknownDevice(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	if code, _ := c.submit("nope", "sys.ping", nil, ""); code != 404 {
		t.Fatalf("unknown device: %d, want 404", code)
	}
	bad := &api{t: t, base: c.base, key: "tck_wrong"}
	if code, _ := bad.do("GET", "/v1/devices", nil); code != 401 {
		t.Fatalf("wrong client key: %d, want 401", code)
	}
	// An agent with a wrong token is refused and keeps retrying at the
	// cap without reaching the device.
	r := c.base[len("http://"):]
	cfg := agentConfig("ws://"+r, "tdv_wrong")
	a := startAgent(t, cfg, mockBoard(t, mock.Options{}))
	time.Sleep(100 * time.Millisecond)
	if a.a.Status().Connected {
		t.Fatal("agent with a wrong token connected")
	}
	code, data := c.do("POST", "/v1/devices/pi-1/requests", "{not json")
	if code != 400 || !strings.Contains(string(data), "error") {
		t.Fatalf("malformed JSON: %d %s", code, data)
	}
}

func TestFullQueue(t *testing.T) {
	dir := t.TempDir()
	addDevice(t, dir, "pi-1")
	key := addClient(t, dir, "app")
	r := startRelay(t, dir, "", func(c *relay.Config) { c.QueueLimit = 3 })
	c := &api{t: t, base: r.url(), key: key}
	for i := 0; i < 3; i++ {
		if code, _ := c.submit("pi-1", "sys.ping", nil, ""); code != 202 {
			t.Fatalf("submit %d: %d", i, code)
		}
	}
	code, data := c.do("POST", "/v1/devices/pi-1/requests", map[string]any{"method": "sys.ping"})
	if code != 429 || !strings.Contains(string(data), protocol.CodeQueueFull) {
		t.Fatalf("full queue: %d %s", code, data)
	}
}

// With a tiny compaction threshold the journal is rewritten in the
// background over and over while requests flow; none may run twice or be
// lost, and the file stays small.
func TestJournalCompactsWhileServing(t *testing.T) {
	state := t.TempDir()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	_, c, _ := setup(t, mock.Options{ExecLog: execLog}, func(cfg *agent.Config) {
		cfg.StateDir = state
		cfg.CompactBytes = 2048
		cfg.Credits = 4
	})

	var ids []string
	for i := 0; i < 200; i++ {
		_, rec := c.submit("pi-1", "gpio.write", map[string]any{"pin": "GPIO5", "level": []string{"low", "high"}[i%2]}, "")
		ids = append(ids, rec.ID)
	}
	for _, id := range ids {
		wantState(t, c.wait(id, 20*time.Second), protocol.StateSucceeded, "")
	}
	data, _ := os.ReadFile(execLog)
	for _, id := range ids {
		if n := strings.Count(string(data), id); n != 1 {
			t.Fatalf("%s executed %d times", id, n)
		}
	}
	st, err := os.Stat(filepath.Join(state, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	// 200 remembered results of a few hundred bytes each, at most twice
	// over between compactions.
	if st.Size() > 256<<10 {
		t.Fatalf("journal is %d bytes after compactions", st.Size())
	}
}

// The largest request the relay takes reaches the board, and its echo
// comes back whole: what the relay accepts fits in every frame on the
// way. One byte more is refused at submission with 413 too_large.
func TestLargestPingEchoes(t *testing.T) {
	_, c, _ := setup(t, mock.Options{}, nil)
	submit := func(n int) (int, protocol.Record) {
		body := `{"method":"sys.ping","params":"` + strings.Repeat("<", n) + `"}`
		code, data := c.do("POST", "/v1/devices/pi-1/requests", body)
		var rec protocol.Record
		if code == 202 || code == 200 { // 200: it had already ended
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatalf("submit answer: %v", err)
			}
		} else if code != 413 || !strings.Contains(string(data), protocol.CodeTooLarge) {
			t.Fatalf("params of %d bytes: status %d: %.200s", n, code, data)
		}
		return code, rec
	}
	// The largest string taken, by bisection: it fits at lo, not at hi.
	lo, hi := 0, protocol.MaxFrame
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if code, _ := submit(mid); code != 413 {
			lo = mid
		} else {
			hi = mid
		}
	}
	if lo < protocol.MaxFrame-512 {
		t.Fatalf("the largest params taken are %d bytes, far below the %d-byte frame", lo, protocol.MaxFrame)
	}
	_, rec := submit(lo)
	rec = c.wait(rec.ID, 10*time.Second)
	wantState(t, rec, protocol.StateSucceeded, "")
	var echo string
	if err := json.Unmarshal(rec.Result, &echo); err != nil || echo != strings.Repeat("<", lo) {
		t.Fatalf("echo of %d bytes came back as %d: %v", lo, len(echo), err)
	}
	if code, _ := submit(lo + 1); code != 413 {
		t.Fatalf("one byte more: status %d", code)
	}
}
