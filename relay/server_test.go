package relay

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

func TestServeGracefulShutdown(t *testing.T) {
	cfg := testConfig(t.TempDir())
	key, _ := AddClient(cfg.DataDir, "web")
	tok, _ := AddDevice(cfg.DataDir, "dev1")
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	h := http.Header{"Authorization": {"Bearer " + tok}}
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}}
	conn, _, err := d.Dial("ws://"+ln.Addr().String()+"/v1/agent", h)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteJSON(map[string]any{"type": "hello", "agent": "t"})
	if _, _, err := conn.ReadMessage(); err != nil { // welcome
		t.Fatal(err)
	}

	// A long-poll in flight must not hold up the shutdown.
	polled := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/v1/devices/dev1/events?wait=1m", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	waitFor(t, "long-poll to start", func() bool {
		srv.hub.mu.Lock()
		defer srv.hub.mu.Unlock()
		return srv.hub.devices["dev1"] != nil
	})

	cancel()
	conn.SetReadDeadline(time.Now().Add(waitLimit))
	_, _, err = conn.ReadMessage()
	if !websocket.IsCloseError(err, protocol.CloseRestart) {
		t.Fatalf("agent saw %v, want close 1012", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Serve did not return")
	}
	if st := <-polled; st != 0 && st != http.StatusOK {
		t.Fatalf("long-poll status %d", st)
	}
	http.DefaultClient.CloseIdleConnections()
}
