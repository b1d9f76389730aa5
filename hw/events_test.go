package hw

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// collector gathers events emitted by Run.
type collector struct {
	mu sync.Mutex
	// Guarded by mu:
	events []edgeEvent
}

func (c *collector) emit(name string, data json.RawMessage) {
	var ev edgeEvent
	if name != EventEdge || json.Unmarshal(data, &ev) != nil {
		ev = edgeEvent{Pin: "bad event " + name + " " + string(data)}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, ev)
}

func (c *collector) snapshot() []edgeEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]edgeEvent(nil), c.events...)
}

func runBoard(t *testing.T, b *Board, c *collector) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, c.emit) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
}

func TestRunEmitsEdges(t *testing.T) {
	r := newRig(t, nil)
	var c collector
	stop := runBoard(t, r.b, &c)
	defer stop()
	r.btn.EdgesChan <- gpio.Low
	waitFor(t, func() bool { return len(c.snapshot()) == 1 })
	r.btn.EdgesChan <- gpio.High
	waitFor(t, func() bool { return len(c.snapshot()) == 2 })
	got := c.snapshot()
	want := []edgeEvent{{"button", "low", "falling"}, {"button", "high", "rising"}}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestRunDebounceAndFilter(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.GPIO[2].Edge = "rising"
		c.GPIO[2].Debounce = 30 * time.Millisecond
	})
	var c collector
	stop := runBoard(t, r.b, &c)
	// A bounce: low and back to high inside the debounce time is no change.
	r.btn.EdgesChan <- gpio.Low
	r.btn.EdgesChan <- gpio.High
	// A real press (falling, filtered out) and release (rising, reported).
	time.Sleep(100 * time.Millisecond)
	r.btn.EdgesChan <- gpio.Low
	time.Sleep(100 * time.Millisecond)
	r.btn.EdgesChan <- gpio.High
	waitFor(t, func() bool { return len(c.snapshot()) >= 1 })
	time.Sleep(100 * time.Millisecond)
	stop()
	got := c.snapshot()
	if len(got) != 1 || got[0] != (edgeEvent{"button", "high", "rising"}) {
		t.Errorf("events %+v, want one rising edge", got)
	}
}

func TestRunOnce(t *testing.T) {
	r := newRig(t, nil)
	var c collector
	stop := runBoard(t, r.b, &c)
	defer stop()
	waitFor(t, func() bool { r.b.mu.Lock(); defer r.b.mu.Unlock(); return r.b.running })
	if err := r.b.Run(context.Background(), c.emit); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v", err)
	}
}

func TestRunStopsOnClose(t *testing.T) {
	r := newRig(t, nil)
	done := make(chan error, 1)
	go func() { done <- r.b.Run(context.Background(), func(string, json.RawMessage) {}) }()
	time.Sleep(10 * time.Millisecond)
	r.b.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}
