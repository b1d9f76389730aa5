package mock

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/hw"
	"periph.io/x/conn/v3/gpio"
)

// hookedInput is the simulated board's wired input (inputPin, unchanged),
// with a hook run once at the start of the watcher's first 1 ms
// WaitForEdge: there a test lands the next change of the wire, as a
// gpio.write on GPIO17 arriving in that millisecond would.
type hookedInput struct {
	*inputPin
	once atomic.Bool
	hook func()
}

func (p *hookedInput) WaitForEdge(timeout time.Duration) bool {
	if timeout == time.Millisecond && p.once.CompareAndSwap(false, true) {
		p.hook()
	}
	return p.inputPin.WaitForEdge(timeout)
}

// A quick high-low of GPIO17, over before the watcher runs, is two queued
// edges on the wired input, as on the kernel's GPIO device: the watcher
// reports both, and takes the second as the pulse's own, so that a change
// that comes while it does so (here, high again) is reported too.
func TestEdgeAfterShortPulseReported(t *testing.T) {
	in := newInputPin(WiredIn, 27)
	hin := &hookedInput{inputPin: in}
	hin.hook = func() { in.drive(gpio.High) } // the next write of GPIO17, high
	cfg := hw.Config{GPIO: []hw.GPIOConfig{{Name: WiredIn, Pin: WiredIn, Direction: "in", Pull: "none", Edge: "both"}}}
	b, err := hw.NewBoard(BoardName, cfg, hw.Resources{Pins: map[string]gpio.PinIO{WiredIn: hin}}, hw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// GPIO17 high then low before the watcher runs: one pending notice.
	in.drive(gpio.High)
	in.drive(gpio.Low)

	var mu sync.Mutex
	var events []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- b.Run(ctx, func(name string, data json.RawMessage) {
			var ev struct{ Level string }
			json.Unmarshal(data, &ev)
			mu.Lock()
			events = append(events, ev.Level)
			mu.Unlock()
		})
	}()
	time.Sleep(500 * time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if in.Read() != gpio.High {
		t.Fatal("setup: input not high")
	}
	if len(events) == 0 || events[len(events)-1] != "high" {
		t.Errorf("input is high, events reported %v: its last rising edge was never reported", events)
	}
}
