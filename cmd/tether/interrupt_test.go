package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// The result a device answered is printed as the device sent it: an
// integer beyond 2^53 (a counter, a 64-bit register, a timestamp in ns)
// keeps its digits, and "<", ">" and "&" in strings stay themselves.
func TestCallPrintsResultAsSent(t *testing.T) {
	const result = `{"n":9007199254740993,"s":"a<b&c"}`
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, result))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "9007199254740993") || !strings.Contains(out, `"a<b&c"`) {
		t.Fatalf("call printed\n%s\nwant the device's value %s unchanged (indented)", out, result)
	}
	code, out, _ = runCLI("--relay", f.srv.URL, "get", "r1")
	if code != 0 || !strings.Contains(out, "9007199254740993") {
		t.Fatalf("get printed\n%s\nwant 9007199254740993", out)
	}
}

// A watch whose subscription the relay refuses for good (the key's scope
// does not cover the device: error frame "forbidden", ref "watch") ends
// with exit 2, as a 401/403 on the upgrade does, instead of waiting for
// ever on a connection that will never carry an event.
func TestWatchRefusedSubscriptionEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up := websocket.Upgrader{}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		if _, _, err := conn.ReadMessage(); err != nil { // subscribe
			return
		}
		b, _ := protocol.Encode(&protocol.ClientError{Ref: "watch", Code: "forbidden",
			Message: `relay: forbidden: client scoped may not use device "pi-1"`})
		conn.WriteMessage(websocket.TextMessage, b)
		for { // the relay keeps the connection open, as it does
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	code, out, errOut := runCLICtx(ctx, "--relay", srv.URL, "watch", "pi-1")
	if code != 2 || time.Since(start) >= 3*time.Second {
		t.Fatalf("watch of a refused device: exit %d after %v (stdout %q, stderr %q); want exit 2 at once",
			code, time.Since(start).Round(time.Millisecond), out, errOut)
	}
}

// A call interrupted (Ctrl-C) while its submit is on the way waits for the
// submit's answer and names the request the relay stored, which the
// device will run: a user who called again would run the action twice.
func TestCallInterruptedDuringSubmitNamesRequest(t *testing.T) {
	var stored atomic.Bool
	submitting := make(chan struct{})
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			// The relay stores the request (an fsync on a slow SD card
			// or a loaded disk), then answers.
			close(submitting)
			time.Sleep(300 * time.Millisecond)
			stored.Store(true)
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			<-r.Context().Done()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-submitting
		cancel() // Ctrl-C
	}()
	code, out, errOut := runCLICtx(ctx, "--relay", f.srv.URL, "call", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	time.Sleep(400 * time.Millisecond)
	if !stored.Load() {
		t.Skip("fake relay did not store")
	}
	if code != 2 || !strings.Contains(out+errOut, "r1") {
		t.Fatalf("exit %d, stdout %q, stderr %q: request r1 was stored and will run, but the user is not told its id", code, out, errOut)
	}
}

// The grace an interrupted submission gets counts from the interrupt: a
// call nobody interrupts waits for its submit's answer however long it
// takes (a relay stalled in its commit, a slow proxy).
func TestSlowSubmitNotCutShort(t *testing.T) {
	defer func(g time.Duration) { submitGrace = g }(submitGrace)
	submitGrace = 100 * time.Millisecond
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			pause(r, 4*submitGrace)
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"ok":true}`))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 0 {
		t.Fatalf("call never interrupted: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
