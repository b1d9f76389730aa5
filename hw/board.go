package hw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/spi"
)

// Options tunes a Board. The zero value is usable.
type Options struct {
	// Version is the agent version reported by sys.info.
	Version string
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// Delay is artificial work time added to every request, honouring the
	// request's context. Simulated boards use it for load tests; real
	// boards leave it 0.
	Delay time.Duration
	// ExecLog, if set, receives one line "<request id> <method>\n" per
	// request Execute runs, written and (if it has a Sync method) synced
	// before the request touches the hardware. The Board owns it and closes
	// it on Close if it is an io.Closer.
	ExecLog io.Writer
}

// Resources holds the periph objects a Board is built from, keyed by the
// hardware names its Config uses (pin "GPIO17", bus "1", port "SPI0.0"). A
// name the Config uses but Resources lacks makes that one resource
// unavailable; Errors may say why.
type Resources struct {
	Pins map[string]gpio.PinIO
	I2C  map[string]i2c.Bus  // closed by Board.Close if an io.Closer
	SPI  map[string]spi.Port // connected once by NewBoard; closed if an io.Closer
	// Errors records why a pin, bus or port could not be opened.
	Errors map[string]error
}

// Board is a set of named peripherals that executes tether requests. Its
// methods are safe for concurrent use; access to each bus, port and pin is
// serialised.
type Board struct {
	name      string
	opts      Options
	log       *slog.Logger
	gpios     map[string]*gpioLine
	pwms      map[string]*pwmPin
	buses     map[string]*i2cBus
	ports     map[string]*spiPort
	kinds     map[string]string // resource name → kind, for not_permitted
	resources []protocol.Resource
	methods   []string
	closers   []io.Closer
	started   time.Time
	sysRoot   string // "/" except in tests

	execMu  sync.Mutex // serialises ExecLog lines
	closeMu sync.Once
	closed  chan struct{}

	mu sync.Mutex
	// Guarded by mu:
	running bool          // a Run is active
	halted  chan struct{} // closed and replaced by each Halt, to abort pulses
}

// handler runs one method on b. It returns a value to marshal, or an error
// that Execute classifies into a protocol failure.
type handler func(b *Board, ctx context.Context, raw json.RawMessage) (any, error)

// Method names.
const (
	MethodGPIORead  = "gpio.read"
	MethodGPIOWrite = "gpio.write"
	MethodGPIOPulse = "gpio.pulse"
	MethodPWMSet    = "pwm.set"
	MethodI2CTx     = "i2c.tx"
	MethodSPITx     = "spi.tx"
	MethodSysInfo   = "sys.info"
	MethodSysPing   = "sys.ping"
)

// Resource kinds, as reported in protocol.Resource.Kind.
const (
	KindGPIO = "gpio"
	KindI2C  = "i2c"
	KindSPI  = "spi"
	KindPWM  = "pwm"
)

// NewBoard builds a Board named name (e.g. "Raspberry Pi 4", "mock") from
// cfg and already-opened periph objects. Outputs are driven to their
// initial level and inputs configured. A resource that is missing or fails
// to configure is reported unavailable by Describe and fails its requests
// with hw_error; the rest of the board works. NewBoard fails only when cfg
// is invalid.
func NewBoard(name string, cfg Config, res Resources, opts Options) (*Board, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Board{
		name:    name,
		opts:    opts,
		log:     opts.Logger,
		gpios:   map[string]*gpioLine{},
		pwms:    map[string]*pwmPin{},
		buses:   map[string]*i2cBus{},
		ports:   map[string]*spiPort{},
		kinds:   map[string]string{},
		started: time.Now(),
		sysRoot: "/",
		closed:  make(chan struct{}),
		halted:  make(chan struct{}),
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.own(opts.ExecLog)
	missing := func(kind, hwName string) error {
		if err := res.Errors[hwName]; err != nil {
			return err
		}
		return fmt.Errorf("hw: %s %s not present on this board", kind, hwName)
	}
	for _, g := range cfg.GPIO {
		l := newGPIOLine(g, res.Pins[g.Pin])
		if l.pin == nil {
			l.err = missing("pin", g.Pin)
		} else {
			l.err = l.setup()
		}
		b.gpios[g.Name] = l
		b.add(KindGPIO, g.Name, l.err, l.info())
	}
	for _, c := range cfg.I2C {
		bus := newI2CBus(c, res.I2C[c.Bus])
		if bus.bus == nil {
			bus.err = missing("i2c bus", c.Bus)
		} else {
			b.own(bus.bus)
		}
		b.buses[c.Name] = bus
		b.add(KindI2C, c.Name, bus.err, bus.info())
	}
	for _, c := range cfg.SPI {
		port := newSPIPort(c)
		if p := res.SPI[c.Port]; p == nil {
			port.err = missing("spi port", c.Port)
		} else {
			b.own(p)
			port.err = port.connect(p)
		}
		b.ports[c.Name] = port
		b.add(KindSPI, c.Name, port.err, port.info())
	}
	for _, c := range cfg.PWM {
		p := &pwmPin{cfg: c, pin: res.Pins[c.Pin], lock: newBusLock()}
		if p.pin == nil {
			p.err = missing("pin", c.Pin)
		} else if err := p.pin.Out(gpio.Low); err != nil {
			// Off until asked: a PWM output left running by a process
			// that crashed stops when the board opens.
			p.err = fmt.Errorf("hw: pwm %s (%s) low: %w", c.Name, c.Pin, err)
		}
		b.pwms[c.Name] = p
		b.add(KindPWM, c.Name, p.err, &pwmInfo{Pin: c.Pin})
	}
	for _, r := range b.resources {
		if !r.Available {
			b.log.Warn("hw: resource unavailable", "kind", r.Kind, "name", r.Name, "err", r.Error)
		}
	}
	for _, m := range handlers {
		if b.offers(m.kind) {
			b.methods = append(b.methods, m.name)
		}
	}
	return b, nil
}

// handlers are the methods a Board can serve, sorted by name, each with the
// kind of resource it needs configured ("" for none). A table rather than
// a map of method values built by NewBoard: less code on a Pi Zero.
var handlers = [...]struct {
	name, kind string
	run        handler
}{
	{MethodGPIOPulse, KindGPIO, (*Board).gpioPulse},
	{MethodGPIORead, KindGPIO, (*Board).gpioRead},
	{MethodGPIOWrite, KindGPIO, (*Board).gpioWrite},
	{MethodI2CTx, KindI2C, (*Board).i2cTx},
	{MethodPWMSet, KindPWM, (*Board).pwmSet},
	{MethodSPITx, KindSPI, (*Board).spiTx},
	{MethodSysInfo, "", (*Board).sysInfo},
	{MethodSysPing, "", (*Board).sysPing},
}

// offers reports whether the board's config has resources of kind; every
// board has those of kind "".
func (b *Board) offers(kind string) bool {
	switch kind {
	case KindGPIO:
		return len(b.gpios) > 0
	case KindI2C:
		return len(b.buses) > 0
	case KindSPI:
		return len(b.ports) > 0
	case KindPWM:
		return len(b.pwms) > 0
	}
	return true
}

// handler returns the handler of method, or nil if the board does not
// serve it.
func (b *Board) handler(method string) handler {
	for _, m := range handlers {
		if m.name == method && b.offers(m.kind) {
			return m.run
		}
	}
	return nil
}

// own makes Close close v if v is an io.Closer.
func (b *Board) own(v any) {
	if c, ok := v.(io.Closer); ok {
		b.closers = append(b.closers, c)
	}
}

type pwmInfo struct {
	Pin string `json:"pin"`
}

func (b *Board) add(kind, name string, err error, info any) {
	b.kinds[name] = kind
	r := protocol.Resource{Name: name, Kind: kind, Available: err == nil, Info: info}
	if err != nil {
		r.Error = err.Error()
	}
	b.resources = append(b.resources, r)
}

// Describe returns the board name, the methods it serves and every
// configured resource, available or not, in config order.
func (b *Board) Describe() (board string, methods []string, resources []protocol.Resource) {
	return b.name, append([]string(nil), b.methods...), append([]protocol.Resource(nil), b.resources...)
}

// Pure reports whether method touches no hardware: sys.ping and sys.info
// only read the agent's own state, so running them twice is harmless (see
// agent.Pure).
func (b *Board) Pure(method string) bool {
	return method == MethodSysPing || method == MethodSysInfo
}

// Instant reports whether method returns at once: sys.ping does, unless
// Options.Delay or Options.ExecLog makes every request wait (see
// agent.Instant).
func (b *Board) Instant(method string) bool {
	return method == MethodSysPing && b.opts.Delay == 0 && b.opts.ExecLog == nil
}

// Execute runs one request. Failures are *protocol.Failure values; a
// canceled ctx yields ctx.Err(). It never panics: a panic in a driver is
// reported as an internal failure of that request alone.
func (b *Board) Execute(ctx context.Context, req *protocol.Request) (value json.RawMessage, err error) {
	if req == nil {
		return nil, protocol.Errorf(protocol.CodeBadParams, "hw: nil request")
	}
	defer func() {
		if r := recover(); r != nil {
			b.log.Error("hw: panic in handler", "method", req.Method, "id", req.ID, "panic", r, "stack", string(debug.Stack()))
			value, err = nil, protocol.Errorf(protocol.CodeInternal, "hw: %s panicked: %v", req.Method, r)
		}
	}()
	select {
	case <-b.closed:
		return nil, protocol.Errorf(protocol.CodeHWError, "%v", ErrClosed)
	default:
	}
	if err := b.logExec(req); err != nil {
		return nil, protocol.Errorf(protocol.CodeHWError, "%v", err)
	}
	h := b.handler(req.Method)
	if h == nil {
		return nil, protocol.Errorf(protocol.CodeUnknownMethod, "hw: %q is not offered by this board", req.Method)
	}
	if err := ctx.Err(); err != nil {
		return nil, classify(fmt.Errorf("hw: %s: %w", req.Method, err))
	}
	if b.opts.Delay > 0 {
		if err := sleep(ctx, b.opts.Delay); err != nil {
			return nil, classify(fmt.Errorf("hw: %s: %w", req.Method, err))
		}
	}
	v, err := h(b, ctx, req.Params)
	if err != nil {
		return nil, classify(err)
	}
	if raw, ok := v.(json.RawMessage); ok {
		return raw, nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInternal, "hw: encode %s result: %v", req.Method, err)
	}
	return raw, nil
}

// classify turns a handler error into what Execute returns.
func classify(err error) error {
	var f *protocol.Failure
	switch {
	case errors.As(err, &f):
		return f
	case errors.Is(err, context.Canceled):
		return context.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return protocol.Errorf(protocol.CodeTimeout, "%v", err)
	}
	return protocol.Errorf(protocol.CodeHWError, "%v", err)
}

// logExec appends the request to Options.ExecLog and syncs it.
func (b *Board) logExec(req *protocol.Request) error {
	if b.opts.ExecLog == nil {
		return nil
	}
	b.execMu.Lock()
	defer b.execMu.Unlock()
	if _, err := fmt.Fprintf(b.opts.ExecLog, "%s %s\n", req.ID, req.Method); err != nil {
		return fmt.Errorf("hw: exec log: %w", err)
	}
	if s, ok := b.opts.ExecLog.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("hw: exec log sync: %w", err)
		}
	}
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Halt drives every available output to its safe level and every PWM pin
// low, and aborts running pulses so they do not restore their old level
// afterwards. It is meant for shutdown and for start-up after a crash; the
// board keeps working after it.
func (b *Board) Halt() error {
	b.mu.Lock()
	close(b.halted)
	b.halted = make(chan struct{})
	b.mu.Unlock()

	var errs []error
	for _, l := range b.gpios {
		if l.err != nil || !l.out {
			continue
		}
		if err := l.drive(l.safe); err != nil {
			errs = append(errs, fmt.Errorf("hw: halt gpio %s: %w", l.cfg.Name, err))
		}
	}
	for _, p := range b.pwms {
		if p.err != nil {
			continue
		}
		if err := p.pin.Out(gpio.Low); err != nil {
			errs = append(errs, fmt.Errorf("hw: halt pwm %s: %w", p.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

// haltSignal returns a channel that is closed by the next Halt.
func (b *Board) haltSignal() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.halted
}

// closeWait bounds how long Close waits for a bus transaction in flight.
const closeWait = 2 * time.Second

// Close stops event watching, waits briefly for transfers in flight and
// releases the buses, ports and ExecLog. It does not change outputs; call
// Halt first for that. Requests after Close fail with hw_error.
func (b *Board) Close() error {
	first := false
	b.closeMu.Do(func() {
		first = true
		close(b.closed)
	})
	if !first {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	for _, bus := range b.buses {
		if bus.lock.lock(ctx) == nil {
			defer bus.lock.unlock()
		}
	}
	for _, p := range b.ports {
		if p.lock.lock(ctx) == nil {
			defer p.lock.unlock()
		}
	}
	var errs []error
	for _, c := range b.closers {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("hw: close: %w", err))
		}
	}
	return errors.Join(errs...)
}

// find returns the resource called name from m, or a failure saying that
// no such resource exists (not_found) or that it is of another kind
// (not_permitted). R is a pointer type, so that one copy of the code
// serves every kind of resource.
func find[R any](b *Board, m map[string]R, kind, field, name string) (R, error) {
	if r, ok := m[name]; ok {
		return r, nil
	}
	var none R
	if k, ok := b.kinds[name]; ok {
		return none, protocol.Errorf(protocol.CodeNotPermitted, "%s: %q is a %s resource, not %s", field, name, k, kind)
	}
	return none, protocol.Errorf(protocol.CodeNotFound, "%s: no %s resource named %q", field, kind, name)
}

// unavailable is the failure of a request to a resource that could not be
// opened.
func unavailable(kind, name string, err error) error {
	return protocol.Errorf(protocol.CodeHWError, "%s %q is unavailable on this board: %v", kind, name, err)
}
