package main

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A call whose first answer was lost (the relay stored the request) and
// whose next attempt finds the relay down (restarting: connection
// refused) must not end as if nothing had been sent: the request may
// exist, and a user who runs the call again without the key runs it
// twice. It either keeps trying or names the key.
func TestCallLostAnswerThenRelayDownNamesKey(t *testing.T) {
	defer func(b []time.Duration) { submitBackoff = b }(submitBackoff)
	submitBackoff = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	base, key := startRelay(t)
	target, _ := url.Parse(base)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var posts atomic.Int32
	var front *httptest.Server
	front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && posts.Add(1) == 1 {
			// The relay stores the request, then goes down before
			// answering.
			proxy.ServeHTTP(httptest.NewRecorder(), r)
			front.Listener.Close()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	code, out, errOut := runCLI("--relay", front.URL, "--key", key, "call", "--async", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	if code == 0 || posts.Load() != 1 {
		t.Fatalf("exit %d after %d posts, stdout %q, stderr %q", code, posts.Load(), out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "--idempotency-key") {
		t.Fatalf("the request was stored, but the call ends without naming its key: exit %d, stderr %q", code, errOut)
	}
}
