package hw

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/gpio"
)

// MaxPulse bounds gpio.pulse, so a typo cannot hold a pin for hours.
const MaxPulse = 60 * time.Second

// gpioLine is one configured GPIO pin. Levels named "logical" are what
// requests and events see; wire levels are what the pin sees.
type gpioLine struct {
	cfg       GPIOConfig
	pin       gpio.PinIO // nil when unavailable
	err       error      // why the pin is unavailable
	out       bool
	initial   gpio.Level // logical
	safe      gpio.Level // logical
	pull      gpio.Pull
	watch     bool // edges become events
	lock      busLock
	activeLow bool
	// last is the last logical level reported for a watched input. Only the
	// active Run's watcher touches it (Run is exclusive).
	last gpio.Level
	// driven is the wire level an output was last driven to. An output is
	// read from here, never from the pin: on the kernel's GPIO character
	// device (periph's gpioioctl) reading a line that is not an input
	// turns it into an input with its pull-up on, so the output would
	// stop driving its load.
	driven atomic.Bool
}

func newGPIOLine(c GPIOConfig, pin gpio.PinIO) *gpioLine {
	l := &gpioLine{
		cfg:       c,
		pin:       pin,
		out:       c.Direction == "out",
		initial:   c.Initial == "high",
		pull:      gpio.Float,
		watch:     c.Direction == "in" && c.Edge != "" && c.Edge != "none",
		lock:      newBusLock(),
		activeLow: c.ActiveLow,
	}
	l.safe = l.initial
	if c.Safe != "" {
		l.safe = c.Safe == "high"
	}
	switch c.Pull {
	case "up":
		l.pull = gpio.PullUp
	case "down":
		l.pull = gpio.PullDown
	}
	return l
}

// wire converts between logical and wire levels (the conversion is its own
// inverse).
func (l *gpioLine) wire(v gpio.Level) gpio.Level { return v != gpio.Level(l.activeLow) }

// setup puts the pin in its configured state. Watched inputs listen for
// both edges: the watcher tracks the level itself and filters by the
// configured edge, which keeps debouncing correct for rising- or
// falling-only pins.
func (l *gpioLine) setup() error {
	if l.out {
		if err := l.drive(l.initial); err != nil {
			return fmt.Errorf("hw: gpio %s (%s) as output: %w", l.cfg.Name, l.cfg.Pin, err)
		}
		return nil
	}
	edge := gpio.NoEdge
	if l.watch {
		edge = gpio.BothEdges
	}
	if err := l.pin.In(l.pull, edge); err != nil {
		return fmt.Errorf("hw: gpio %s (%s) as input: %w", l.cfg.Name, l.cfg.Pin, err)
	}
	l.last = l.wire(l.pin.Read())
	return nil
}

// drive sets an output to the logical level v and remembers it.
func (l *gpioLine) drive(v gpio.Level) error {
	w := l.wire(v)
	if err := l.pin.Out(w); err != nil {
		return err
	}
	l.driven.Store(bool(w))
	return nil
}

// level returns the pin's logical level: for an output the level it was
// last driven to, for an input what the pin reads.
func (l *gpioLine) level() gpio.Level {
	if l.out {
		return l.wire(gpio.Level(l.driven.Load()))
	}
	return l.wire(l.pin.Read())
}

// haltedAfter drives the safe level again if the board was halted since
// halted was taken, so that a write or pulse that raced with Halt cannot
// leave its level in place of the safe one; it reports whether it did.
func (l *gpioLine) haltedAfter(halted <-chan struct{}) (bool, error) {
	select {
	case <-halted:
		return true, l.drive(l.safe)
	default:
		return false, nil
	}
}

// gpioInfo is a pin's protocol.Resource.Info. Structs rather than maps
// for every Info: each map literal compiles to code of its own, and the
// Pi Zero's binary has little room.
type gpioInfo struct {
	Pin       string `json:"pin"`
	Direction string `json:"direction"`
	ActiveLow bool   `json:"active_low,omitempty"`
	Pull      string `json:"pull,omitempty"`
	Edge      string `json:"edge,omitempty"`
}

func (l *gpioLine) info() *gpioInfo {
	m := &gpioInfo{Pin: l.cfg.Pin, Direction: l.cfg.Direction, ActiveLow: l.activeLow}
	if !l.out {
		m.Pull = l.pull.String()
		if l.watch {
			m.Edge = l.cfg.Edge
		}
	}
	return m
}

// gpioFor finds the named pin and checks it can be used.
func (b *Board) gpioFor(p params, output bool) (*gpioLine, error) {
	name, err := p.str("pin")
	if err != nil {
		return nil, err
	}
	l, err := find(b, b.gpios, KindGPIO, "pin", name)
	if err != nil {
		return nil, err
	}
	if output && !l.out {
		return nil, protocol.Errorf(protocol.CodeNotPermitted, "pin: %q is an input", name)
	}
	if l.err != nil {
		return nil, unavailable(KindGPIO, name, l.err)
	}
	return l, nil
}

type levelResult struct {
	Level string `json:"level"`
}

func (b *Board) gpioRead(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "pin")
	if err != nil {
		return nil, err
	}
	l, err := b.gpioFor(p, false)
	if err != nil {
		return nil, err
	}
	return levelResult{Level: levelName(l.level())}, nil
}

func (b *Board) gpioWrite(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "pin", "level")
	if err != nil {
		return nil, err
	}
	l, err := b.gpioFor(p, true)
	if err != nil {
		return nil, err
	}
	level, err := p.level("level")
	if err != nil {
		return nil, err
	}
	if err := l.lock.lock(ctx); err != nil {
		return nil, fmt.Errorf("hw: waiting for gpio %s: %w", l.cfg.Name, err)
	}
	defer l.lock.unlock()
	halted := b.haltSignal()
	if err := l.drive(level); err != nil {
		return nil, fmt.Errorf("hw: gpio %s write: %w", l.cfg.Name, err)
	}
	if h, err := l.haltedAfter(halted); h {
		return nil, haltedDuring(l, "write", err)
	}
	return struct{}{}, nil
}

// haltedDuring is the error of a write or pulse that Halt overtook.
func haltedDuring(l *gpioLine, what string, err error) error {
	if err != nil {
		return fmt.Errorf("hw: gpio %s: board halted during %s, and driving the safe level failed: %w", l.cfg.Name, what, err)
	}
	return protocol.Errorf(protocol.CodeHWError, "gpio %s: board halted during %s; pin left at its safe level", l.cfg.Name, what)
}

// gpioPulse drives the pin, waits and restores the level it had before. The
// pin stays locked for the whole pulse so writes cannot interleave. If the
// request's context ends early the level is restored and the context error
// returned; if the board is halted meanwhile the safe level is left alone.
func (b *Board) gpioPulse(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "pin", "level", "duration")
	if err != nil {
		return nil, err
	}
	l, err := b.gpioFor(p, true)
	if err != nil {
		return nil, err
	}
	level, err := p.level("level")
	if err != nil {
		return nil, err
	}
	d, err := p.duration("duration", MaxPulse)
	if err != nil {
		return nil, err
	}
	if err := l.lock.lock(ctx); err != nil {
		return nil, fmt.Errorf("hw: waiting for gpio %s: %w", l.cfg.Name, err)
	}
	defer l.lock.unlock()
	halted := b.haltSignal()
	prev := l.level()
	if err := l.drive(level); err != nil {
		return nil, fmt.Errorf("hw: gpio %s pulse: %w", l.cfg.Name, err)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	var waitErr error
	select {
	case <-t.C:
	case <-ctx.Done():
		waitErr = fmt.Errorf("hw: gpio %s pulse cut short: %w", l.cfg.Name, ctx.Err())
	case <-halted:
		// Halt drove the safe level, possibly before this pulse drove
		// its own; drive it again rather than leave the pulse's.
		_, err := l.haltedAfter(halted)
		return nil, haltedDuring(l, "pulse", err)
	case <-b.closed:
		return nil, protocol.Errorf(protocol.CodeHWError, "gpio %s: %v during pulse", l.cfg.Name, ErrClosed)
	}
	if err := l.drive(prev); err != nil {
		return nil, fmt.Errorf("hw: gpio %s restore after pulse: %w", l.cfg.Name, err)
	}
	if h, err := l.haltedAfter(halted); h {
		return nil, haltedDuring(l, "pulse", err) // Halt came as it restored
	}
	if waitErr != nil {
		return nil, waitErr
	}
	return struct{}{}, nil
}
