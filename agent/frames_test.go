package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/tetherhq/tether/protocol"
)

// scriptedRelay welcomes the agent with maxFrame, waits for its first
// pull, runs script on the connection and reports what script returns.
func scriptedRelay(t testing.TB, maxFrame int, script func(c *websocket.Conn) string) (url string, outcome <-chan string) {
	t.Helper()
	out := make(chan string, 1)
	up := websocket.Upgrader{Subprotocols: []string{protocol.Version}}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(1 << 20)
		if _, _, err := c.ReadMessage(); err != nil { // hello
			return
		}
		b, _ := protocol.Encode(&protocol.Welcome{Session: "s1", Device: "d1", Relay: "fake", MaxFrame: maxFrame, PingMs: 60000})
		c.WriteMessage(websocket.TextMessage, b)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			if m, _ := protocol.Decode(b, 1<<20); m != nil && m.MsgType() == protocol.TypePull {
				break
			}
		}
		select {
		case out <- script(c):
		default:
		}
	}))
	t.Cleanup(ts.Close)
	return "ws" + strings.TrimPrefix(ts.URL, "http"), out
}

func runAgainst(t *testing.T, url string, outcome <-chan string) string {
	t.Helper()
	return runWith(t, url, outcome, &countingExec{})
}

// runWith runs an agent with exec against url until outcome tells how
// the relay's script ended.
func runWith(t testing.TB, url string, outcome <-chan string, exec Executor) string {
	t.Helper()
	a, err := New(Config{Relay: url, Token: "t", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, exec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; a.Close() }()
	select {
	case s := <-outcome:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("the relay's script did not finish")
		return ""
	}
}

// The agent accepts frames up to the max_frame its relay announced, above
// its own default limit (SPEC §2): a request of 100 KB from a relay that
// announced 256 KiB is run and answered.
func TestAgentAcceptsFramesUpToWelcomeLimit(t *testing.T) {
	url, outcome := scriptedRelay(t, 256<<10, func(c *websocket.Conn) string {
		params, _ := json.Marshal(strings.Repeat("x", 100_000))
		b, _ := protocol.Encode(&protocol.Request{ID: "r-big", Method: "m", Params: params, TimeoutMs: 60000, Attempt: 1})
		c.WriteMessage(websocket.TextMessage, b)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				return "closed: " + err.Error()
			}
			if m, _ := protocol.Decode(b, 1<<20); m != nil && m.MsgType() == protocol.TypeResult {
				return "result"
			}
		}
	})
	if got := runAgainst(t, url, outcome); got != "result" {
		t.Fatalf("a 100 KB request under a 256 KiB limit: %s", got)
	}
}

// A binary frame is not part of tether.v1: the agent refuses it with
// bad_frame and closes, and does not run what it holds.
func TestAgentRefusesBinaryFrames(t *testing.T) {
	url, outcome := scriptedRelay(t, protocol.MaxFrame, func(c *websocket.Conn) string {
		b, _ := protocol.Encode(&protocol.Request{ID: "r-bin", Method: "m", TimeoutMs: 60000, Attempt: 1})
		c.WriteMessage(websocket.BinaryMessage, b)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				if ce, ok := err.(*websocket.CloseError); ok && strings.Contains(ce.Text, protocol.CodeBadFrame) {
					return "refused"
				}
				return "closed: " + err.Error()
			}
			if m, _ := protocol.Decode(b, 1<<20); m != nil && m.MsgType() == protocol.TypeResult {
				return "ran it"
			}
		}
	})
	if got := runAgainst(t, url, outcome); got != "refused" {
		t.Fatalf("a request in a binary frame: %s", got)
	}
}
