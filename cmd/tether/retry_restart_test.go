package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

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
