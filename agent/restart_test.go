package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// reconnectGap runs an agent with cfg against a relay that closes the
// first session, once welcomed, with closeMsg, and returns how long after
// that close the agent dialled again.
func reconnectGap(t *testing.T, cfg Config, closeMsg []byte) time.Duration {
	t.Helper()
	var (
		mu     sync.Mutex
		dials  []time.Time
		closed time.Time
	)
	up := websocket.Upgrader{Subprotocols: []string{protocol.Version}}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		mu.Lock()
		dials = append(dials, time.Now())
		first := len(dials) == 1
		mu.Unlock()
		if _, _, err := c.ReadMessage(); err != nil { // hello
			return
		}
		b, _ := protocol.Encode(&protocol.Welcome{Session: "s1", Device: "d1", Relay: "fake", MaxFrame: protocol.MaxFrame, PingMs: 60000})
		c.WriteMessage(websocket.TextMessage, b)
		if first {
			mu.Lock()
			closed = time.Now()
			mu.Unlock()
			c.WriteMessage(websocket.CloseMessage, closeMsg)
		}
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				return
			}
		}
	}))
	defer ts.Close()

	cfg.Relay, cfg.Token, cfg.ShutdownGrace = "ws"+strings.TrimPrefix(ts.URL, "http"), "t", 100*time.Millisecond
	a, err := New(cfg, echoExec{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	defer func() { cancel(); <-done }()

	waitUntil(t, "a second dial", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(dials) >= 2
	})
	mu.Lock()
	defer mu.Unlock()
	return dials[1].Sub(closed)
}

// A relay shutting down closes with 1012 and a reconnect delay; the agent
// comes back at that moment, not at whatever its backoff would draw.
func TestRestartCloseSetsReconnectTime(t *testing.T) {
	const asked = 400 * time.Millisecond
	gap := reconnectGap(t, Config{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// A backoff that would almost never come back this soon.
		BackoffInitial: 10 * time.Second,
		BackoffMax:     10 * time.Second,
	}, websocket.FormatCloseMessage(protocol.CloseRestart, protocol.RestartReason(asked)))
	if gap < asked || gap > asked+time.Second {
		t.Fatalf("came back %v after the close, asked for %v", gap, asked)
	}
}

// A session the relay hands to a newer connection of the same device
// means a second agent holds this device's credentials (an agent's own
// reconnect never sees its old session closed): the agent says so and
// comes back at the backoff cap instead of at once, so that the two do not
// take the session from each other many times a second, each handover
// leaving requests to run twice.
func TestReplacedSessionReportedAndBacksOff(t *testing.T) {
	const backoffMax = 600 * time.Millisecond
	logs := &syncBuf{}
	gap := reconnectGap(t, Config{
		Logger:         slog.New(slog.NewTextHandler(logs, nil)),
		BackoffInitial: 10 * time.Millisecond,
		BackoffMax:     backoffMax,
	}, websocket.FormatCloseMessage(websocket.CloseNormalClosure, protocol.ReplacedReason))
	if gap < backoffMax {
		t.Errorf("came back %v after the session was handed to another connection, want the backoff cap %v", gap, backoffMax)
	}
	if !strings.Contains(logs.String(), "ANOTHER AGENT IS CONNECTED WITH THIS DEVICE'S CREDENTIALS") {
		t.Errorf("no error naming a second agent with the same credentials in the logs:\n%s", logs.String())
	}
}
