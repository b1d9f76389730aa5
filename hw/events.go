package hw

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// EventEdge is the name of the event emitted for an input edge.
const EventEdge = "gpio.edge"

// edgePoll is how long one WaitForEdge call may block. It bounds how late a
// watcher notices that Run's context ended or the board closed; periph's
// WaitForEdge cannot be interrupted otherwise.
const edgePoll = 100 * time.Millisecond

// maxDrain bounds how many queued bounce edges one debounce swallows, so a
// chattering input cannot starve the loop's shutdown check.
const maxDrain = 64

// edgeEvent is the data of a gpio.edge event.
type edgeEvent struct {
	Pin   string `json:"pin"`
	Level string `json:"level"`
	Edge  string `json:"edge"`
}

// Run watches every available input configured with an edge and calls emit
// for each gpio.edge event, from one goroutine per input (emit must be safe
// for concurrent use). It returns nil once ctx is done or the board is
// closed, and only after every goroutine it started has stopped. Only one
// Run may be active at a time.
func (b *Board) Run(ctx context.Context, emit func(name string, data json.RawMessage)) error {
	b.mu.Lock()
	if b.running {
		b.mu.Unlock()
		return ErrRunning
	}
	b.running = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.running = false
		b.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range b.gpios {
		if l.err != nil || !l.watch {
			continue
		}
		wg.Go(func() { b.watch(ctx, l, emit) })
	}
	select {
	case <-ctx.Done():
	case <-b.closed:
	}
	cancel()
	wg.Wait()
	return nil
}

// watch reports level changes of one input until ctx ends or the board
// closes. It tracks the last reported level itself, so an edge whose level
// bounced back within the debounce time, or a repeated edge, is not
// reported twice. l.last starts at the level seen when the board opened,
// so a change made before Run starts is still reported.
func (b *Board) watch(ctx context.Context, l *gpioLine, emit func(string, json.RawMessage)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.closed:
			return
		default:
		}
		start := time.Now()
		if !l.pin.WaitForEdge(edgePoll) {
			// A driver that gives up at once (e.g. a line that lost its
			// edge setup) must not turn this loop into a busy spin.
			if time.Since(start) < edgePoll/10 && sleep(ctx, edgePoll) != nil {
				return
			}
			continue
		}
		if d := l.cfg.Debounce; d > 0 {
			if sleep(ctx, d) != nil {
				return
			}
			// Swallow the edges of the bounce; the level read below is the
			// settled one. (Never WaitForEdge(0): gpioioctl treats 0 as
			// "no deadline".)
			for i := 0; i < maxDrain && l.pin.WaitForEdge(time.Millisecond); i++ {
			}
		}
		level := l.wire(l.pin.Read())
		if level == l.last {
			if l.cfg.Debounce > 0 {
				continue // a bounce that settled where it was
			}
			// Woken by an edge, yet the level is the one last reported:
			// a pulse ended before the pin was read. Every edge is
			// reported without debouncing, so both of its edges are, and
			// the second one's queued notice is taken here rather than
			// read as another pulse.
			b.report(l, !level, emit)
			l.pin.WaitForEdge(time.Millisecond)
		}
		b.report(l, level, emit)
	}
}

// report records level as l's last and emits its edge if the input is
// configured for it.
func (b *Board) report(l *gpioLine, level gpio.Level, emit func(string, json.RawMessage)) {
	l.last = level
	ev := edgeEvent{Pin: l.cfg.Name, Level: levelName(l.last), Edge: "falling"}
	if level {
		ev.Edge = "rising"
	}
	if l.cfg.Edge != "both" && l.cfg.Edge != ev.Edge {
		return
	}
	data, _ := json.Marshal(ev) // cannot fail: strings only
	emit(EventEdge, data)
}
