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

func TestFullJitterStaysUnderGrowingCeiling(t *testing.T) {
	b := newBackoff(500*time.Millisecond, 30*time.Second)
	ceiling := 500 * time.Millisecond
	for i := 0; i < 20; i++ {
		d := b.NextBackOff()
		if d <= 0 || d > ceiling {
			t.Fatalf("attempt %d: wait %v outside (0, %v]", i, d, ceiling)
		}
		ceiling = min(2*ceiling, 30*time.Second)
	}
	// After many attempts the ceiling is the cap, and the waits spread
	// over it instead of clustering at it.
	var low, high int
	for i := 0; i < 1000; i++ {
		if d := b.NextBackOff(); d < 15*time.Second {
			low++
		} else {
			high++
		}
	}
	if low < 300 || high < 300 {
		t.Fatalf("waits not spread over [0, cap): %d below half, %d above", low, high)
	}
	b.Reset()
	if d := b.NextBackOff(); d > 500*time.Millisecond {
		t.Fatalf("after reset wait %v, want <= 500ms", d)
	}
}

// A session counts as healthy, and resets the backoff, only for the time it
// ran after its welcome. A relay that takes longer than HealthyAfter to
// answer the hello and then drops every session must see the agent's waits
// grow, not start again from the initial interval each time.
func TestSlowHandshakeDoesNotResetBackoff(t *testing.T) {
	const slow = 120 * time.Millisecond
	var mu sync.Mutex
	var closed, gaps []time.Time // when each session ended, when the next began
	up := websocket.Upgrader{Subprotocols: []string{protocol.Version}}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gaps = append(gaps, time.Now())
		mu.Unlock()
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer func() {
			mu.Lock()
			closed = append(closed, time.Now())
			mu.Unlock()
			c.Close()
		}()
		if _, _, err := c.ReadMessage(); err != nil { // hello
			return
		}
		time.Sleep(slow)
		b, _ := protocol.Encode(&protocol.Welcome{Session: "s", Device: "d1", Relay: "fake", MaxFrame: protocol.MaxFrame, PingMs: 60000})
		c.WriteMessage(websocket.TextMessage, b)
	}))
	defer ts.Close()
	a, err := New(Config{
		Relay: "ws" + strings.TrimPrefix(ts.URL, "http"), Token: "t",
		BackoffInitial: time.Millisecond, BackoffMax: 10 * time.Second, HealthyAfter: slow / 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, &countingExec{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; a.Close() }()

	// Sessions 6 to 10 follow waits with ceilings of 32 ms to 512 ms when
	// the backoff grows; all five under 20 ms has odds of about 1 in 10,000.
	// Reset after every session, each wait is under 1 ms.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(gaps)
		mu.Unlock()
		if n >= 11 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d sessions in 20 s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var longest time.Duration
	for i := 5; i < 10; i++ {
		longest = max(longest, gaps[i+1].Sub(closed[i]))
	}
	if longest < 20*time.Millisecond {
		t.Fatalf("waits after sessions 6-10 all under 20 ms (longest %v): the backoff was reset by sessions that were never healthy", longest)
	}
}
