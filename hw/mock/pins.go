package mock

import (
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// inputPin is a simulated input whose level is set by whatever drives it.
// gpiotest.Pin reports a level only when its edge is consumed, so a Read
// right after the driving write would be stale while no one watches edges;
// inputPin updates the level at once and only signals the edge.
type inputPin struct {
	*gpiotest.Pin
	// edges holds one notice per level change not yet waited for, as the
	// kernel's GPIO character device queues one event per edge (and, like
	// its buffer, drops changes past its size).
	edges chan struct{}
}

// edgeQueue is how many edges an input keeps for its watcher.
const edgeQueue = 64

func newInputPin(name string, num int) *inputPin {
	return &inputPin{
		Pin:   &gpiotest.Pin{N: name, Num: num, Fn: "GPIO"},
		edges: make(chan struct{}, edgeQueue),
	}
}

// In records the pull; the level stays what the wire drives.
func (p *inputPin) In(pull gpio.Pull, edge gpio.Edge) error {
	p.Lock()
	defer p.Unlock()
	p.P = pull
	return nil
}

// WaitForEdge waits for a level change or the timeout (-1: forever).
func (p *inputPin) WaitForEdge(timeout time.Duration) bool {
	if timeout < 0 {
		<-p.edges
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.edges:
		return true
	case <-t.C:
		return false
	}
}

// drive sets the level seen by Read and signals an edge if it changed.
func (p *inputPin) drive(l gpio.Level) {
	p.Lock()
	changed := p.L != l
	p.L = l
	p.Unlock()
	if changed {
		select {
		case p.edges <- struct{}{}:
		default: // the queue is full; the watcher reads the level
		}
	}
}

// wiredPin is an output whose level also drives an input.
type wiredPin struct {
	*gpiotest.Pin
	to *inputPin
}

// Out drives the pin and the input wired to it.
func (p *wiredPin) Out(l gpio.Level) error {
	if err := p.Pin.Out(l); err != nil {
		return err
	}
	p.to.drive(l)
	return nil
}
