package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

// startRelay runs a real relay with device pi-1 and returns its URL and a
// client key.
func startRelay(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	key, err := relay.AddClient(dir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.AddDevice(dir, "pi-1"); err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(relay.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx)
	}()
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		cancel()
		<-done
		ts.Close()
		srv.Close()
	})
	return ts.URL, key
}

// loseFirstAnswer puts a proxy in front of the relay at base that passes
// the first POST on to it but loses its answer (the connection breaks),
// then, if down, stops listening, as a relay going down would. It counts
// the POSTs.
func loseFirstAnswer(t *testing.T, base string, down bool) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	target, _ := url.Parse(base)
	proxy := httputil.NewSingleHostReverseProxy(target)
	posts := new(atomic.Int32)
	var front *httptest.Server
	front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && posts.Add(1) == 1 {
			proxy.ServeHTTP(httptest.NewRecorder(), r) // the relay stores the request
			if down {
				front.Listener.Close()
			}
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return front, posts
}

// A call whose submission reached the relay but whose answer was lost (the
// connection broke) submits again with the same key, and the relay gives
// it the request it stored: one request, not two. Told the key, a user
// who runs the same call again gets that request too.
func TestCallSubmitsAgainAfterALostAnswer(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	base, key := startRelay(t)
	front, posts := loseFirstAnswer(t, base, false)

	code, out, errOut := runCLI("--relay", front.URL, "--key", key, "call", "--async", "--idempotency-key", "blink-1", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	if code != 0 || posts.Load() != 2 || !strings.Contains(errOut, "submitting again") {
		t.Fatalf("exit %d after %d posts, stdout %q, stderr %q", code, posts.Load(), out, errOut)
	}
	id := strings.TrimSpace(out)
	code, again, errOut := runCLI("--relay", base, "--key", key, "call", "--async", "--idempotency-key", "blink-1", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	if code != 0 || strings.TrimSpace(again) != id {
		t.Fatalf("the same call again: exit %d, id %q (want %s), stderr %q", code, again, id, errOut)
	}
	code, dev, _ := runCLI("--relay", base, "--key", key, "devices", "--json")
	var list struct{ Devices []protocol.DeviceInfo }
	if err := json.Unmarshal([]byte(dev), &list); code != 0 || err != nil || len(list.Devices) != 1 || list.Devices[0].Queued != 1 {
		t.Fatalf("devices: exit %d, %s (%v); want pi-1 with 1 request queued", code, dev, err)
	}

	// The same key for another action is refused, and says why.
	code, _, errOut = runCLI("--relay", base, "--key", key, "call", "--idempotency-key", "blink-1", "pi-1", "gpio.write", "pin=GPIO17", "level=low")
	if code != 2 || !strings.Contains(errOut, "key_reused") {
		t.Fatalf("key reused: exit %d, stderr %q", code, errOut)
	}
}

// A relay that cannot be reached at all is told at once, not retried: the
// request cannot have been sent.
func TestCallToAClosedPortNotRetried(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	addr := ts.URL
	ts.Close()
	code, _, errOut := runCLI("--relay", addr, "call", "pi-1", "sys.ping")
	if code != 2 || strings.Contains(errOut, "submitting again") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// A relay restarting (503) is asked again with the same key, which the
// call made up itself.
func TestCallSubmitsAgainWhileRelayUnavailable(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	var keys []string
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			var sub protocol.Submit
			json.NewDecoder(r.Body).Decode(&sub)
			keys = append(keys, sub.Key)
			if len(keys) < 3 {
				if len(keys) == 1 {
					w.Header().Set("Retry-After", "1")
				}
				answer(w, http.StatusServiceUnavailable, protocol.APIError{Error: protocol.Failure{Code: "unavailable", Message: "relay is shutting down"}})
				return
			}
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "call", "--async", "pi-1", "sys.ping")
	if code != 0 || strings.TrimSpace(out) != "r1" || len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] {
		t.Fatalf("exit %d, stdout %q, stderr %q, keys %q", code, out, errOut, keys)
	}
	if !strings.Contains(errOut, "submitting again in 1s") || !strings.Contains(errOut, "submitting again in 10ms") {
		t.Errorf("stderr %q: want the relay's Retry-After (1s) heeded, then the call's own pause", errOut)
	}
	// Past the last attempt, the call gives up and names the key.
	keys = nil
	submitBackoff = submitBackoff[:1]
	code, _, errOut = runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 2 || !strings.Contains(errOut, "--idempotency-key "+keys[0]) {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// A call that loses the relay while it waits for the result (the relay
// restarting, a network gap) keeps following its request, and ends as
// the request does; only an outage longer than followPatience ends it,
// naming the request.
func TestCallKeepsFollowingThroughAnOutage(t *testing.T) {
	defer func(b, p time.Duration) { followBackoff, followPatience = b, p }(followBackoff, followPatience)
	followBackoff = 10 * time.Millisecond
	down := true
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			switch {
			case down && n == 1:
				answer(w, http.StatusServiceUnavailable, protocol.APIError{Error: protocol.Failure{Code: "unavailable", Message: "relay is shutting down"}})
			case down && n == 2:
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close() // the relay died answering
				}
			case down:
				answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"ok":true}`))
			default:
				answer(w, http.StatusBadGateway, protocol.APIError{Error: protocol.Failure{Code: "bad_gateway", Message: "proxy"}})
			}
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 0 || !strings.Contains(out, `"ok": true`) || strings.Count(errOut, "still following request r1") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	down = false
	followPatience = 50 * time.Millisecond
	code, _, errOut = runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 2 || !strings.Contains(errOut, "request r1 may still run") {
		t.Fatalf("an outage past the patience: exit %d, stderr %q", code, errOut)
	}
}

// A relay that predates idempotency keys drops them: a call whose answer
// was lost does not submit again to it, which would run the action twice,
// and says why.
func TestCallDoesNotRepeatToARelayWithoutKeys(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "GET" && r.URL.Path == "/healthz":
			answer(w, http.StatusOK, map[string]bool{"ok": true}) // as relays before keys answer
		case r.Method == "POST":
			posts.Add(1)
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close() // stored, but the answer is lost
			}
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	}))
	defer srv.Close()
	code, _, errOut := runCLI("--relay", srv.URL, "call", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	if code != 2 || posts.Load() != 1 || !strings.Contains(errOut, "does not recognise idempotency keys") {
		t.Fatalf("exit %d after %d posts, stderr %q", code, posts.Load(), errOut)
	}
}

// A call whose first answer was lost (the relay stored the request) and
// whose next attempt finds the relay down (restarting: connection
// refused) must not end as if nothing had been sent: the request may
// exist, and a user who runs the call again without the key runs it
// twice. It either keeps trying or names the key.
func TestCallLostAnswerThenRelayDownNamesKey(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	base, key := startRelay(t)
	front, posts := loseFirstAnswer(t, base, true)
	code, out, errOut := runCLI("--relay", front.URL, "--key", key, "call", "--async", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	if code == 0 || posts.Load() != 1 {
		t.Fatalf("exit %d after %d posts, stdout %q, stderr %q", code, posts.Load(), out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "--idempotency-key") {
		t.Fatalf("the request was stored, but the call ends without naming its key: exit %d, stderr %q", code, errOut)
	}
}

// A relay that answers 503 unavailable is shutting down to restart: its
// port is closed for a moment before the new process listens again. A
// call that was told so keeps submitting (with its key) through that gap,
// as the README promises for a restarting relay, instead of giving up at
// the first refused connection.
func TestCallSubmitsAgainThroughARelayRestart(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var posts atomic.Int32
	down := make(chan struct{})
	old := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		answer(w, http.StatusServiceUnavailable, protocol.APIError{Error: protocol.Failure{Code: "unavailable", Message: "relay is shutting down"}})
		close(down)
	})}
	go old.Serve(ln)
	newSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			posts.Add(1)
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
			return
		}
		answer(w, http.StatusOK, map[string]bool{"ok": true, "idempotency_keys": true})
	})}
	defer newSrv.Close()
	go func() {
		<-down
		old.Close() // the old process exits: its port is closed
		time.Sleep(250 * time.Millisecond)
		ln2, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("relisten: %v", err)
			return
		}
		newSrv.Serve(ln2)
	}()
	code, out, errOut := runCLICtx(context.Background(), "--relay", "http://"+addr, "call", "--async", "pi-1", "sys.ping")
	if code != 0 || strings.TrimSpace(out) != "r1" {
		t.Fatalf("exit %d after %d posts, stdout %q, stderr %q", code, posts.Load(), out, errOut)
	}
}

// A relay shutting down answers a long-poll at once with the request
// still running; a call waiting for the result does not spin on it.
func TestCallDoesNotSpinOnEarlyAnswers(t *testing.T) {
	var gets atomic.Int32
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			gets.Add(1)
			answer(w, http.StatusOK, record("r1", protocol.StateDelivered, ""))
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	runCLICtx(ctx, "--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if n := gets.Load(); n > 10 {
		t.Fatalf("%d long-polls in half a second of early answers; want a handful", n)
	}
}

// get --wait waits out a relay that is restarting, within its wait; a get
// without --wait reports the failure at once.
func TestGetWaitThroughAnOutage(t *testing.T) {
	defer func(b time.Duration) { followBackoff = b }(followBackoff)
	followBackoff = 10 * time.Millisecond
	f := startFakeRelay(t, &fakeRelay{
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			if n%2 == 1 {
				answer(w, http.StatusServiceUnavailable, protocol.APIError{Error: protocol.Failure{Code: "unavailable", Message: "relay is shutting down"}})
				return
			}
			answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"ok":true}`))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "get", "r1", "--wait", "5s")
	if code != 0 || !strings.Contains(out, `"ok": true`) || !strings.Contains(errOut, "still waiting for request r1") {
		t.Fatalf("get --wait through a restart: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI("--relay", f.srv.URL, "get", "r1")
	if code != 2 || !strings.Contains(errOut, "503") {
		t.Fatalf("get without --wait at a restarting relay: exit %d, stderr %q", code, errOut)
	}
}

// A long-poll whose answer never comes (a proxy or a NAT that stopped
// forwarding without closing the connection, a relay stopped dead) is a
// lost connection once the wait it asked for is well past: the call polls
// again and ends as its request does, instead of hanging for ever, and
// `get --wait` ends too.
func TestCallFollowsPastAStalledLongPoll(t *testing.T) {
	defer func(w, s, b time.Duration) { maxWait, pollSlack, followBackoff = w, s, b }(maxWait, pollSlack, followBackoff)
	maxWait, pollSlack, followBackoff = 50*time.Millisecond, 100*time.Millisecond, 10*time.Millisecond
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			if n == 1 || n == 3 {
				<-r.Context().Done() // the answer never arrives
				return
			}
			answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"ok":true}`))
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code, out, errOut := runCLICtx(ctx, "--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 0 || !strings.Contains(out, `"ok": true`) || !strings.Contains(errOut, "still following request r1") {
		t.Fatalf("call whose long-poll stalled: exit %d, stdout %q, stderr %q; want the result", code, out, errOut)
	}
	code, _, errOut = runCLICtx(ctx, "--relay", f.srv.URL, "get", "--wait", "30ms", "r1")
	if code != 2 || ctx.Err() != nil || strings.Contains(errOut, "interrupted") {
		t.Fatalf("get --wait whose long-poll stalled: exit %d, stderr %q; want exit 2 once the wait is well past", code, errOut)
	}
}
