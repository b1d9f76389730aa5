package hw

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// chardevPin models how periph.io/x/host/v3/gpioioctl.GPIOLine (the
// kernel's GPIO character device, which DESIGN.md §5 names as the path to
// GPIO on every board including the Pi 5, and which bcm283x.Pin delegates
// to whenever the /dev/gpiomem register window is not mapped) treats Read
// on a line that is not an input. From host/v3@v3.8.5 gpioioctl/gpio.go:
//
//	func (line *GPIOLine) Read() gpio.Level {
//		if line.direction != LineInput {
//			err := line.In(gpio.PullUp, gpio.NoEdge)
//			...
//
// i.e. reading an output turns it into an input with the pull-up enabled:
// the line stops driving and reads what the circuit (here: only the
// pull-up) makes of it.
type chardevPin struct {
	gpiotest.Pin
	mu     sync.Mutex
	output bool // guarded by mu
}

func (p *chardevPin) Out(l gpio.Level) error {
	p.mu.Lock()
	p.output = true
	p.mu.Unlock()
	return p.Pin.Out(l)
}

func (p *chardevPin) In(pull gpio.Pull, edge gpio.Edge) error {
	p.mu.Lock()
	p.output = false
	p.mu.Unlock()
	return p.Pin.In(pull, edge) // gpiotest: a pull-up makes the line read high
}

func (p *chardevPin) Read() gpio.Level {
	p.mu.Lock()
	out := p.output
	p.mu.Unlock()
	if out {
		if err := p.In(gpio.PullUp, gpio.NoEdge); err != nil {
			return gpio.Low
		}
	}
	return p.Pin.Read()
}

func (p *chardevPin) isOutput() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output
}

func chardevBoard(t *testing.T) (*Board, *chardevPin) {
	t.Helper()
	pin := &chardevPin{Pin: gpiotest.Pin{N: "GPIO17", Num: 17}}
	cfg := Config{GPIO: []GPIOConfig{{Name: "relay", Pin: "GPIO17", Direction: "out", Initial: "low"}}}
	b, err := NewBoard("t", cfg, Resources{Pins: map[string]gpio.PinIO{"GPIO17": pin}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, pin
}

func execOn(b *Board, ctx context.Context, method, params string) (json.RawMessage, error) {
	return b.Execute(ctx, &protocol.Request{ID: "h", Method: method, Params: json.RawMessage(params), TimeoutMs: 1000})
}

// gpio.read of an output answers the level last written without reading
// the pin, which on the GPIO character device would release the output: a
// relay driven low would be left floating with its pull-up, and the level
// reported would not be the one written.
func TestReadOfOutputKeepsItDriving(t *testing.T) {
	b, pin := chardevBoard(t)
	got, err := execOn(b, context.Background(), "gpio.read", `{"pin":"relay"}`)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"level":"low"}` {
		t.Errorf("gpio.read of an output written low reports %s", got)
	}
	if !pin.isOutput() {
		t.Error("gpio.read turned the output into an input (pull-up): the pin no longer drives its load")
	}
}

// gpio.pulse restores the level the output was driven to, not the level a
// read of the pin gives (on the GPIO character device, that of a pulled-up
// input): a pulse on an output idling low leaves it low.
func TestPulseRestoresTheLevelDriven(t *testing.T) {
	b, pin := chardevBoard(t)
	if _, err := execOn(b, context.Background(), "gpio.pulse", `{"pin":"relay","level":"high","duration":5}`); err != nil {
		t.Fatal(err)
	}
	if !pin.isOutput() {
		t.Error("pin is not an output after the pulse")
	}
	if pin.Pin.Read() != gpio.Low {
		t.Error("pulse high on an output idling low left it high")
	}
}

// blockingOutPin holds the first Out after it is armed until released, so
// that a test can land a Halt between a pulse taking the halt signal and
// its level reaching the pin.
type blockingOutPin struct {
	gpiotest.Pin
	armed   atomic.Bool
	driving chan struct{} // closed when the armed Out is entered
	release chan struct{} // the armed Out goes on once it is closed
}

func (p *blockingOutPin) Out(l gpio.Level) error {
	if p.armed.CompareAndSwap(true, false) {
		close(p.driving)
		<-p.release
	}
	return p.Pin.Out(l)
}

// A Halt that overtakes a pulse or a write (it drives the safe level
// before the request drives its own) still leaves the pin at its safe
// level: the request drives it again and reports that it was halted.
func TestHaltOvertakingWins(t *testing.T) {
	for method, params := range map[string]string{
		"gpio.pulse": `{"pin":"led","level":"high","duration":"10s"}`,
		"gpio.write": `{"pin":"led","level":"high"}`,
	} {
		t.Run(method, func(t *testing.T) {
			pin := &blockingOutPin{
				Pin:     gpiotest.Pin{N: "GPIO17", Num: 17},
				driving: make(chan struct{}),
				release: make(chan struct{}),
			}
			cfg := Config{GPIO: []GPIOConfig{{Name: "led", Pin: "GPIO17", Direction: "out", Initial: "low", Safe: "low"}}}
			b, err := NewBoard("t", cfg, Resources{Pins: map[string]gpio.PinIO{"GPIO17": pin}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			pin.armed.Store(true)
			done := make(chan error, 1)
			go func() {
				_, err := execOn(b, context.Background(), method, params)
				done <- err
			}()
			<-pin.driving // the request holds the pin lock and its halt signal
			if err := b.Halt(); err != nil {
				t.Fatal(err)
			}
			close(pin.release)
			select {
			case err := <-done:
				var f *protocol.Failure
				if !errors.As(err, &f) || f.Code != protocol.CodeHWError || !strings.Contains(f.Message, "halted") {
					t.Errorf("%s overtaken by Halt returned %v, want hw_error naming the halt", method, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s did not end after Halt", method)
			}
			if pin.Pin.Read() != gpio.Low {
				t.Errorf("after Halt the pin is at the level of %s (high), not its safe level (low)", method)
			}
		})
	}
}

// queuedEdgePin is an input like the kernel's GPIO character device: every
// transition queues one edge event, and Read returns the level now (not
// the level at the time of the queued edge).
type queuedEdgePin struct {
	gpiotest.Pin
	edges chan struct{}
}

func (p *queuedEdgePin) In(pull gpio.Pull, edge gpio.Edge) error { return nil }

func (p *queuedEdgePin) WaitForEdge(timeout time.Duration) bool {
	select {
	case <-p.edges:
		return true
	case <-time.After(timeout):
		return false
	}
}

// set changes the level and queues an edge.
func (p *queuedEdgePin) set(l gpio.Level) {
	p.Pin.Out(l)
	p.edges <- struct{}{}
}

// With debounce 0 every edge is reported, also both edges of a pulse that
// was over by the time the watcher read the pin (two queued edges, the
// level back where it was), and the pulse's second queued edge is not
// taken for another pulse.
func TestShortPulseReportsBothEdges(t *testing.T) {
	pin := &queuedEdgePin{Pin: gpiotest.Pin{N: "GPIO27", Num: 27}, edges: make(chan struct{}, 16)}
	cfg := Config{GPIO: []GPIOConfig{{Name: "meter", Pin: "GPIO27", Direction: "in", Edge: "both"}}}
	b, err := NewBoard("t", cfg, Resources{Pins: map[string]gpio.PinIO{"GPIO27": pin}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// A 1 ms pulse on the input, both edges already queued by the kernel
	// when the watcher gets to run.
	pin.set(gpio.High)
	pin.set(gpio.Low)
	var c collector
	stop := runBoard(t, b, &c)
	deadline := time.Now().Add(time.Second)
	for len(c.snapshot()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	got := c.snapshot()
	want := []edgeEvent{{"meter", "high", "rising"}, {"meter", "low", "falling"}}
	if !slices.Equal(got, want) {
		t.Fatalf("events %+v, want %+v (debounce 0: report every edge)", got, want)
	}
}

// nthOutPin blocks its n-th Out (counting from 1, the board's setup) until
// released, so a test can land a Halt between a pulse's wait ending and
// its restore reaching the pin.
type nthOutPin struct {
	gpiotest.Pin
	n       int32
	calls   atomic.Int32
	driving chan struct{}
	release chan struct{}
}

func (p *nthOutPin) Out(l gpio.Level) error {
	if p.calls.Add(1) == p.n {
		close(p.driving)
		<-p.release
	}
	return p.Pin.Out(l)
}

// A Halt that lands after a pulse's wait ended but before its restore
// reached the pin wins: the pin is left at its safe level (low), not the
// pre-pulse level (high), and the pulse reports that it was halted.
func TestHaltDuringPulseRestoreWins(t *testing.T) {
	pin := &nthOutPin{
		Pin:     gpiotest.Pin{N: "GPIO17", Num: 17},
		n:       4, // 1 setup, 2 write high, 3 pulse low, 4 restore high
		driving: make(chan struct{}),
		release: make(chan struct{}),
	}
	cfg := Config{GPIO: []GPIOConfig{{Name: "led", Pin: "GPIO17", Direction: "out", Initial: "low", Safe: "low"}}}
	b, err := NewBoard("t", cfg, Resources{Pins: map[string]gpio.PinIO{"GPIO17": pin}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := execOn(b, context.Background(), "gpio.write", `{"pin":"led","level":"high"}`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := execOn(b, context.Background(), "gpio.pulse", `{"pin":"led","level":"low","duration":5}`)
		done <- err
	}()
	<-pin.driving // the pulse's wait is over; its restore is on its way to the pin
	if err := b.Halt(); err != nil {
		t.Fatal(err)
	}
	close(pin.release)
	var perr error
	select {
	case perr = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("pulse did not end")
	}
	if pin.Pin.Read() != gpio.Low {
		t.Errorf("Halt returned, then the pulse's restore drove the pin high again (pulse returned %v): the pin is not at its safe level", perr)
	}
	if perr == nil {
		t.Error("the pulse overtaken by Halt reported success")
	}
}
