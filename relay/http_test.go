package relay

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// A submit body is one JSON value and nothing else, also where what
// follows it starts with ']' or '}' (which Decoder.More waves through).
func TestSubmitRefusesTrailingData(t *testing.T) {
	e := newEnv(t)
	for _, body := range []string{
		`{"method":"m"}]`,
		`{"method":"m"}}`,
		`{"method":"m"} ] then anything at all <script>`,
	} {
		st, out := e.do("POST", "/v1/devices/dev1/requests", body)
		if st != http.StatusBadRequest || apiCode(t, out) != codeBadRequest {
			t.Errorf("body %q: status %d %s, want 400 bad_request (trailing data)", body, st, out)
		}
	}
}

// A keep-alive connection that goes quiet after one request is closed
// after IdleTimeout, and one that sends its headers and then stalls its
// body after ReadTimeout: nobody, with or without a credential, can pin
// connections (descriptors, goroutines, buffers) by going silent.
func TestIdleAndStalledConnectionsAreDropped(t *testing.T) {
	const bound = 10 * time.Second // far above both timeouts
	cfg := testConfig(t.TempDir())
	cfg.ReadTimeout = 300 * time.Millisecond
	cfg.IdleTimeout = 300 * time.Millisecond
	key, err := AddClient(cfg.DataDir, "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AddDevice(cfg.DataDir, "dev1"); err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	defer serveOn(srv, ln)()
	addr := ln.Addr().String()

	// Idle keep-alive: one complete request, then silence.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// Stalled bodies: the headers promise 100 bytes, 10 come; once with a
	// key the relay refuses before it reads the body, once with a good one.
	stall := func(key string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		io.WriteString(c, "POST /v1/devices/dev1/requests HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+key+"\r\nContent-Length: 100\r\n\r\n{\"method\":")
		return c
	}
	stalled, stalledKeyed := stall("tck_whatever"), stall(key)

	// The deadline of a body ends once it is read: a submit's long-poll
	// waits past ReadTimeout for its answer (202: no agent is connected).
	start := time.Now()
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/devices/dev1/requests?wait=1s", strings.NewReader(`{"method":"sys.ping"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatalf("long-poll submit: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || time.Since(start) < 900*time.Millisecond {
			t.Errorf("long-poll submit: %d after %v, want 202 after its 1 s wait", resp.StatusCode, time.Since(start))
		}
	}

	closed := func(c net.Conn, r io.Reader) chan error {
		ch := make(chan error, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(bound))
			_, err := io.Copy(io.Discard, r)
			ch <- err
		}()
		return ch
	}
	for name, ch := range map[string]chan error{
		"idle keep-alive":         closed(idle, br),
		"stalled body":            closed(stalled, stalled),
		"stalled body with a key": closed(stalledKeyed, stalledKeyed),
	} {
		if err := <-ch; errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s connection still open after %v", name, bound)
		}
	}
}

// A client holds at most a tenth of the unused tickets (Config.MaxTickets):
// no key, however scoped, can fill the pool and lock every other client
// (the operator's dashboard included) out of /v1/client.
func TestOneClientCannotSpendEveryonesTickets(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxTickets = 100 })
	sc, err := ParseScope("nothing-real", "none.*")
	if err != nil {
		t.Fatal(err)
	}
	weak, err := AddClientScoped(e.cfg.DataDir, "weak", sc)
	if err != nil {
		t.Fatal(err)
	}
	post := func(key string) int {
		req, _ := http.NewRequest("POST", e.ts.URL+"/v1/tickets", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	bought := 0
	for post(weak) == http.StatusCreated {
		bought++
	}
	if bought != 10 {
		t.Errorf("client weak bought %d tickets of a pool of 100, want its share of 10", bought)
	}
	if st := post(e.key); st != http.StatusCreated {
		t.Fatalf("client web: POST /v1/tickets = %d after client weak (scope %s) bought tickets; want 201", st, sc)
	}
}

// CLIENT.md section 1: every refusal of /v1/client before the upgrade is
// a plain HTTP answer with the JSON body {"error":{"code","message"}}, and
// the agent endpoint answers the same way; also the refusals gorilla's
// Upgrader makes itself (no valid Sec-WebSocket-Key, another
// Sec-WebSocket-Version).
func TestUpgradeRefusalsAreJSON(t *testing.T) {
	e := newEnv(t)
	for _, path := range []string{protocol.ClientPath, "/v1/agent"} {
		for _, h := range []map[string]string{
			{"Sec-WebSocket-Version": "13"}, // no Sec-WebSocket-Key
			{"Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
		} {
			req, _ := http.NewRequest("GET", e.ts.URL+path, nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Protocol", protocol.Version)
			for k, v := range h {
				req.Header.Set(k, v)
			}
			cred := e.key
			if path == "/v1/agent" {
				cred = e.token
			}
			req.Header.Set("Authorization", "Bearer "+cred)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body protocol.APIError
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
				json.Unmarshal(b, &body) != nil || body.Error.Code == "" {
				t.Errorf("%s %v: %d %q %q, want a JSON error body", path, h, resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
		}
	}
}
