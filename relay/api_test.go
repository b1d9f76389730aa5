package relay

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/tetherhq/tether/protocol"
)

func TestHealthzNeedsNoAuth(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Get(e.ts.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]bool
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 || !body["ok"] {
		t.Fatalf("status %d body %v err %v", resp.StatusCode, body, err)
	}
}

func TestClientAuth(t *testing.T) {
	e := newEnv(t)
	tests := []struct{ name, header string }{
		{"missing", ""},
		{"wrong key", "Bearer " + ClientKeyPrefix + "nope"},
		{"device token", "Bearer " + e.token},
		{"not bearer", "Basic " + e.key},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.ts.URL+"/v1/devices", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body protocol.APIError
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != http.StatusUnauthorized || body.Error.Code != codeUnauthorized {
				t.Fatalf("status %d body %+v", resp.StatusCode, body)
			}
		})
	}
}

func TestAPIErrors(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 1024 })
	big := `{"method":"m","params":{"pad":"` + strings.Repeat("x", 2000) + `"}}`
	tests := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"unknown device info", "GET", "/v1/devices/nope", nil, 404, protocol.CodeNotFound},
		{"unknown device submit", "POST", "/v1/devices/nope/requests", protocol.Submit{Method: "m"}, 404, protocol.CodeNotFound},
		{"unknown device events", "GET", "/v1/devices/nope/events", nil, 404, protocol.CodeNotFound},
		{"unknown request", "GET", "/v1/requests/r-nope", nil, 404, protocol.CodeNotFound},
		{"malformed JSON", "POST", "/v1/devices/dev1/requests", `{"method":`, 400, codeBadRequest},
		{"trailing data", "POST", "/v1/devices/dev1/requests", `{"method":"m"} {}`, 400, codeBadRequest},
		{"oversized body", "POST", "/v1/devices/dev1/requests", big, 413, protocol.CodeTooLarge},
		{"missing method", "POST", "/v1/devices/dev1/requests", `{}`, 400, protocol.CodeBadParams},
		{"bad timeout", "POST", "/v1/devices/dev1/requests", `{"method":"m","timeout":"-1s"}`, 400, protocol.CodeBadParams},
		{"bad params", "POST", "/v1/devices/dev1/requests", `{"method":"m","params":"x"}`, 202, ""},
		{"params not UTF-8", "POST", "/v1/devices/dev1/requests", "{\"method\":\"m\",\"params\":{\"s\":\"\xff\xfe\"}}", 400, protocol.CodeBadParams},
		{"key in another case (encoding/json's path)", "POST", "/v1/devices/dev1/requests", `{"Method":"m","timeout":1500}`, 202, ""},
		{"bad wait", "POST", "/v1/devices/dev1/requests?wait=soon", protocol.Submit{Method: "m"}, 400, protocol.CodeBadParams},
		{"bad after", "GET", "/v1/devices/dev1/events?after=-1", nil, 400, protocol.CodeBadParams},
		{"method not allowed", "PUT", "/v1/devices/dev1/requests", nil, 405, codeMethodNotAllowed},
		{"no such endpoint", "GET", "/v2/nothing", nil, 404, protocol.CodeNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do(tc.method, tc.path, tc.body)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, body)
			}
			if tc.code != "" {
				if got := apiCode(t, body); got != tc.code {
					t.Fatalf("code %q, want %q: %s", got, tc.code, body)
				}
			}
		})
	}
}

func TestQueueFull(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QueueLimit = 2 })
	e.submit(protocol.Submit{Method: "m"})
	e.submit(protocol.Submit{Method: "m"})
	req, _ := http.NewRequest("POST", e.ts.URL+"/v1/devices/dev1/requests", strings.NewReader(`{"method":"m"}`))
	req.Header.Set("Authorization", "Bearer "+e.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body protocol.APIError
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusTooManyRequests || body.Error.Code != protocol.CodeQueueFull || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d body %+v retry-after %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
}

func TestDevicesList(t *testing.T) {
	e := newEnv(t)
	if _, err := AddDevice(e.cfg.DataDir, "dev2"); err != nil {
		t.Fatal(err)
	}
	a := dialAgent(e, e.token)
	_ = a
	st, body := e.do("GET", "/v1/devices", nil)
	if st != 200 {
		t.Fatalf("status %d", st)
	}
	got := decode[struct{ Devices []protocol.DeviceInfo }](t, body).Devices
	if len(got) != 2 || got[0].ID != "dev1" || !got[0].Online || got[0].Agent != "test/1" ||
		got[0].LastSeen == nil || got[1].ID != "dev2" || got[1].Online {
		t.Fatalf("devices %s", body)
	}
}

func TestGetWaitTimesOutWithCurrentState(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m"})
	start := time.Now()
	st, body := e.do("GET", "/v1/requests/"+rec.ID+"?wait=30ms", nil)
	if st != 200 || decode[protocol.Record](t, body).State != protocol.StateQueued {
		t.Fatalf("%d %s", st, body)
	}
	if time.Since(start) < 30*time.Millisecond {
		t.Fatal("wait returned early")
	}
}

func TestEvents(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EventsKept = 3 })
	a := dialAgent(e, e.token)
	var last uint64
	sendEvent := func(seq uint64) {
		t.Helper()
		a.send(&protocol.Event{Seq: seq, Name: "gpio.edge", Data: json.RawMessage(`{"pin":"GPIO27"}`), AgeMs: 1000})
		last = max(last, seq) // acks name the last seq stored
		if ack := nextAs[*protocol.Ack](a); ack.Events != last {
			t.Fatalf("ack %+v, want events %d", ack, last)
		}
	}
	sendEvent(1)
	sendEvent(2)
	sendEvent(1) // duplicate: acked (with 2), not stored again
	events := func(query string) []protocol.EventRecord {
		t.Helper()
		st, body := e.do("GET", "/v1/devices/dev1/events"+query, nil)
		if st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
		return decode[struct{ Events []protocol.EventRecord }](t, body).Events
	}
	got := events("?after=0")
	if len(got) != 2 || got[0].Seq != 1 || got[1].Seq != 2 || got[0].Name != "gpio.edge" {
		t.Fatalf("events %+v", got)
	}
	if age := time.Since(got[0].Time); age < time.Second || age > time.Minute {
		t.Fatalf("event time %v is not now-age", got[0].Time)
	}
	if got := events("?after=2"); len(got) != 0 {
		t.Fatalf("after=2: %+v", got)
	}
	if got := events("?after=18446744073709551615"); len(got) != 0 { // after+1 must not wrap
		t.Fatalf("after=max: %+v", got)
	}

	// A long-poll is woken by the next event.
	polled := make(chan []protocol.EventRecord, 1)
	go func() {
		st, body := e.do("GET", "/v1/devices/dev1/events?after=2&wait=5s", nil)
		if st != 200 {
			polled <- nil
			return
		}
		polled <- decode[struct{ Events []protocol.EventRecord }](t, body).Events
	}()
	sendEvent(3)
	select {
	case got := <-polled:
		if len(got) != 1 || got[0].Seq != 3 {
			t.Fatalf("long-poll got %+v", got)
		}
	case <-time.After(waitLimit):
		t.Fatal("long-poll not woken")
	}

	// Only EventsKept remain.
	sendEvent(4)
	sendEvent(5)
	if got := events("?after=0"); len(got) != 3 || got[0].Seq != 3 {
		t.Fatalf("after trimming: %+v", got)
	}
}

func TestResultRetention(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ResultRetention = 20 * time.Millisecond })
	rec := e.submit(protocol.Submit{Method: "m"})
	e.do("DELETE", "/v1/requests/"+rec.ID, nil)
	waitFor(t, "deletion of the finished request", func() bool {
		st, _ := e.do("GET", "/v1/requests/"+rec.ID, nil)
		return st == http.StatusNotFound
	})
}

func TestMaxRetained(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxRetained = 1 })
	first := e.submit(protocol.Submit{Method: "m"})
	second := e.submit(protocol.Submit{Method: "m"})
	e.do("DELETE", "/v1/requests/"+first.ID, nil)
	e.do("DELETE", "/v1/requests/"+second.ID, nil)
	waitFor(t, "deletion of the oldest result", func() bool {
		st, _ := e.do("GET", "/v1/requests/"+first.ID, nil)
		return st == http.StatusNotFound
	})
	if got := e.record(second.ID, ""); got.State != protocol.StateCanceled {
		t.Fatalf("newest result %+v", got)
	}
}

// A request whose frame to the agent could exceed MaxFrame is refused at
// submission, over REST (413) and over /v1/client (an error for its ref,
// the connection kept), and never reaches the agent: the agent would
// refuse the frame and lose its session at every attempt. The largest
// request that is accepted reaches an agent that reads at most MaxFrame.
func TestRequestFrameFitsAgentLimit(t *testing.T) {
	const limit = 1024
	e := newEnv(t, func(c *Config) { c.MaxFrame = limit })
	a := connect(e, e.token, func(c *websocket.Conn) { c.SetReadLimit(limit) })
	a.send(&protocol.Hello{Agent: "test/1", Board: "mock", Methods: []string{"sys.ping"}})
	nextAs[*protocol.Welcome](a)

	pad := func(n int) string { return `"` + strings.Repeat("x", n-2) + `"` }
	// The body fits in MaxFrame; the request frame would not.
	body := `{"method":"m","params":` + pad(limit-len(`{"method":"m","params":}`)) + `}`
	st, b := e.do("POST", "/v1/devices/dev1/requests", body)
	if st != http.StatusRequestEntityTooLarge || apiCode(t, b) != protocol.CodeTooLarge {
		t.Fatalf("status %d: %s", st, b)
	}

	c := dialClient(e)
	c.sendRaw([]byte(`{"type":"call","ref":"big","device":"dev1","method":"m","params":` + pad(2*limit) + `}`))
	if f := clientNext[*protocol.ClientError](c); f.Ref != "big" || f.Code != protocol.CodeTooLarge {
		t.Fatalf("error %+v", f)
	}

	// The largest params that fit are taken, and delivered.
	sub := protocol.Submit{Method: "m", Timeout: protocol.Duration(7 * 24 * time.Hour), Idempotent: true}
	sub.Params = json.RawMessage(pad(limit - requestFrameMax(&sub)))
	if n := requestFrameMax(&sub); n != limit {
		t.Fatalf("frame bound %d, want %d", n, limit)
	}
	c.sendJSON(map[string]any{"type": "call", "ref": "fits", "device": "dev1", "method": sub.Method, "params": sub.Params, "timeout": "168h", "idempotent": true})
	acc := clientNext[*protocol.ClientAccepted](c)
	a.send(&protocol.Pull{N: 1})
	if req := nextAs[*protocol.Request](a); req.ID != acc.ID || string(req.Params) != string(sub.Params) {
		t.Fatalf("delivered %s, want %s", req.ID, acc.ID)
	}
}

// A wait in milliseconds too large for a duration is the longest wait,
// not an error: it is clamped to MaxWait.
func TestWaitClamped(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m"})
	if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != 200 {
		t.Fatalf("cancel: %d %s", st, body)
	}
	for _, w := range []string{"9223372036854775807", "99999999999", "1000h"} {
		if st, body := e.do("GET", "/v1/requests/"+rec.ID+"?wait="+w, nil); st != 200 {
			t.Errorf("wait=%s: %d %s", w, st, body)
		}
	}
	if st, _ := e.do("GET", "/v1/requests/"+rec.ID+"?wait=-5", nil); st != 400 {
		t.Errorf("wait=-5: %d", st)
	}
}

// Results whose deletion failed stay the oldest kept, and a later sweep
// deletes them once the store works again.
func TestRetentionDeleteRetried(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ResultRetention = 20 * time.Millisecond })
	rec := e.submit(protocol.Submit{Method: "m"})
	if st, body := e.do("DELETE", "/v1/requests/"+rec.ID, nil); st != 200 {
		t.Fatalf("cancel: %d %s", st, body)
	}
	restore := breakCommits(t, e.srv.st)
	time.Sleep(100 * time.Millisecond) // past retention: sweeps try, and fail, to delete it
	restore()
	waitFor(t, "the old result deleted", func() bool {
		st, _ := e.do("GET", "/v1/requests/"+rec.ID, nil)
		return st == 404
	})
}

// A relay refuses settings it cannot run with instead of starting and
// failing later: a negative ping period crashed it at the first client,
// a negative session limit turned every agent away.
func TestConfigRefusesNonPositive(t *testing.T) {
	for _, tweak := range []func(*Config){
		func(c *Config) { c.PingPeriod = -time.Second },
		func(c *Config) { c.MaxConns = -1 },
		func(c *Config) { c.AdmitRate = -1 },
		func(c *Config) { c.RotateGrace = -5 * time.Minute },
		func(c *Config) { c.ClientRate = -1 },
		// Agents refuse a rotate frame with a grace over 30 days: the
		// rotation would be sent and refused at every session.
		func(c *Config) { c.RotateGrace = 31 * 24 * time.Hour },
	} {
		cfg := testConfig(t.TempDir())
		tweak(&cfg)
		if srv, err := New(cfg); err == nil {
			srv.Close()
			t.Errorf("New took %+v", cfg)
		} else if !strings.Contains(err.Error(), "must be positive") && !strings.Contains(err.Error(), "at most") {
			t.Errorf("error %v", err)
		}
	}
}

// A shutdown asks each agent back at its own moment, one admission slot
// apart; with more sessions than the longest delay an agent honours has
// slots for, the rest are spread over that window again, not all asked
// back at its end.
func TestRestartReasonsSpread(t *testing.T) {
	s := &Server{cfg: Config{AdmitRate: 20}}
	next := s.restartReasons()
	at := map[time.Duration]int{}
	for range 10_000 {
		d, ok := protocol.ParseRestart(protocol.CloseRestart, next())
		if !ok || d > protocol.MaxRestartDelay {
			t.Fatalf("reason for %v (%v)", d, ok)
		}
		at[d.Truncate(10*time.Second)]++
	}
	// 18 a second over 300 s is ~5,400 slots: each 10 s gets ~330 of the
	// 10,000, twice over at most.
	for d, n := range at {
		if n > 2*10_000/29 {
			t.Errorf("%d of 10,000 agents asked back within 10 s of %v", n, d)
		}
	}
}

// Every answer is JSON, not to be cached, and sent with its length rather
// than chunked, small or large.
func TestAnswersHaveTheirLength(t *testing.T) {
	e := newEnv(t)
	small := e.submit(protocol.Submit{Method: "m"})
	large := e.submit(protocol.Submit{Method: "m", Params: json.RawMessage(`{"pad":"` + strings.Repeat("x", 10000) + `"}`)})
	for _, id := range []string{small.ID, large.ID, "r-nope"} {
		req, _ := http.NewRequest("GET", e.ts.URL+"/v1/requests/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+e.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != int64(len(b)) || len(resp.TransferEncoding) > 0 {
			t.Errorf("%s: %d bytes, Content-Length %d, Transfer-Encoding %q", id, len(b), resp.ContentLength, resp.TransferEncoding)
		}
		if ct, cc := resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"); ct != "application/json" || cc != "no-store" {
			t.Errorf("%s: Content-Type %q, Cache-Control %q", id, ct, cc)
		}
		if id != "r-nope" && decode[protocol.Record](t, b).ID != id {
			t.Errorf("%s: answered %s", id, b)
		}
	}
}

// A submission's body is held to the frame limit whether or not its
// length is given up front (chunked, it is not).
func TestSubmitBodyLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxFrame = 1024 })
	fits := `{"method":"m","params":{"pad":"` + strings.Repeat("x", 800) + `"}}`
	over := `{"method":"m","params":{"pad":"` + strings.Repeat("x", 2000) + `"}}`
	for _, tc := range []struct {
		name    string
		body    string
		chunked bool
		status  int
	}{
		{"fits", fits, false, http.StatusAccepted},
		{"fits, chunked", fits, true, http.StatusAccepted},
		{"over", over, false, http.StatusRequestEntityTooLarge},
		{"over, chunked", over, true, http.StatusRequestEntityTooLarge},
	} {
		var body io.Reader = strings.NewReader(tc.body)
		if tc.chunked {
			body = io.MultiReader(body) // a length net/http cannot know: sent chunked
		}
		if status, b := e.do("POST", "/v1/devices/dev1/requests", body); status != tc.status {
			t.Errorf("%s: %d %s", tc.name, status, b)
		}
	}
}

// FuzzQueryValue: queryValue reads any query as url.URL.Query does.
func FuzzQueryValue(f *testing.F) {
	for _, q := range []string{"", "wait=30s", "wait=5s&wait=6s", "a=1&wait=1500", "wait", "wait=", "=wait&wait=x=y",
		"wait=%31s", "w%61it=2s", "wait=1+s", "a=1;wait=2s&wait=3s", "wait=%zz&wait=4s", "&&wait=7s&", "WAIT=1s"} {
		f.Add(q, "wait")
	}
	f.Add("a=1&"+strings.Repeat("b&", maxPlainParams)+"wait=1s", "wait")
	f.Fuzz(func(t *testing.T, q, key string) {
		u := &url.URL{RawQuery: q}
		if got, want := queryValue(u, key), u.Query().Get(key); got != want {
			t.Fatalf("queryValue(%q, %q) = %q, Query gives %q", q, key, got, want)
		}
	})
}

// The access log names the client a REST call authenticated as, with the
// call's status, and one refused by its key without a client.
func TestAccessLogNamesTheClient(t *testing.T) {
	logs := &logBuffer{}
	e := newEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	if st, body := e.do("GET", "/v1/devices/dev1", nil); st != http.StatusOK {
		t.Fatalf("%d %s", st, body)
	}
	if st, _ := e.doAs(ClientKeyPrefix+"nope", nil, "GET", "/v1/devices", nil); st != http.StatusUnauthorized {
		t.Fatalf("unknown key: %d", st)
	}
	e.stop()
	var ok, refused bool
	for _, line := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(line, "uri=/v1/devices/dev1 "):
			ok = strings.Contains(line, "status=200") && strings.Contains(line, "client=web")
		case strings.Contains(line, "uri=/v1/devices "):
			refused = strings.Contains(line, "status=401") && !strings.Contains(line, "client=")
		}
	}
	if !ok || !refused {
		t.Fatalf("access log (200 with client=web: %v, 401 without a client: %v):\n%s", ok, refused, logs)
	}
}
