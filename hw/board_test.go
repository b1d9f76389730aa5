package hw

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3"
	"periph.io/x/conn/v3/conntest"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/spi"
	"periph.io/x/conn/v3/spi/spitest"
)

// fakeBus is an i2c.Bus that answers reads with a fixed pattern, can fail,
// and can block until released (to hold the bus lock in timeout tests).
type fakeBus struct {
	err   error
	block chan struct{} // if set, Tx waits for it to close
	mu    sync.Mutex
	// Guarded by mu:
	ops []i2ctest.IO
}

func (b *fakeBus) String() string                    { return "fake" }
func (b *fakeBus) SetSpeed(f physic.Frequency) error { return nil }
func (b *fakeBus) Tx(addr uint16, w, r []byte) error {
	if b.block != nil {
		<-b.block
	}
	if b.err != nil {
		return b.err
	}
	for i := range r {
		r[i] = byte(0xa0 + i)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ops = append(b.ops, i2ctest.IO{Addr: addr, W: append([]byte(nil), w...), R: append([]byte(nil), r...)})
	return nil
}

// failPort is an spi.Port whose connection always fails its transfers.
type failPort struct{}

func (failPort) String() string                      { return "failport" }
func (failPort) LimitSpeed(f physic.Frequency) error { return nil }
func (failPort) Connect(f physic.Frequency, m spi.Mode, bits int) (spi.Conn, error) {
	return failConn{}, nil
}

type failConn struct{}

func (failConn) String() string                 { return "failconn" }
func (failConn) Duplex() conn.Duplex            { return conn.Full }
func (failConn) Tx(w, r []byte) error           { return errors.New("spidev: EIO") }
func (failConn) TxPackets(p []spi.Packet) error { return errors.New("spidev: EIO") }

// rig is a board over periph fakes.
type rig struct {
	b      *Board
	led    *gpiotest.Pin // out GPIO17
	inv    *gpiotest.Pin // out GPIO22, active low, safe high
	btn    *gpiotest.Pin // in GPIO27, edge both
	fan    *gpiotest.Pin // pwm GPIO18
	bus    *fakeBus
	badBus *fakeBus
	spi    *spitest.Record
}

func newRig(t *testing.T, mutate func(*Config)) *rig {
	t.Helper()
	r := &rig{
		led:    &gpiotest.Pin{N: "GPIO17", Num: 17},
		inv:    &gpiotest.Pin{N: "GPIO22", Num: 22},
		btn:    &gpiotest.Pin{N: "GPIO27", Num: 27, EdgesChan: make(chan gpio.Level, 8)},
		fan:    &gpiotest.Pin{N: "GPIO18", Num: 18},
		bus:    &fakeBus{},
		badBus: &fakeBus{err: errors.New("i2c: remote I/O error")},
		spi:    &spitest.Record{Port: &loopPort{}},
	}
	cfg := Config{
		GPIO: []GPIOConfig{
			{Name: "led", Pin: "GPIO17", Direction: "out", Initial: "high", Safe: "low"},
			{Name: "inv", Pin: "GPIO22", Direction: "out", ActiveLow: true, Safe: "high"},
			{Name: "button", Pin: "GPIO27", Direction: "in", Pull: "up", Edge: "both"},
			{Name: "ghost", Pin: "GPIO5", Direction: "out"},
		},
		I2C: []I2CConfig{
			{Name: "sensors", Bus: "1", Addresses: []uint16{0x48, 0x50}},
			{Name: "broken", Bus: "2", Addresses: []uint16{0x10}},
			{Name: "absent", Bus: "7", Addresses: []uint16{0x10}},
		},
		SPI: []SPIConfig{
			{Name: "adc", Port: "SPI0.0", Speed: "1MHz"},
			{Name: "flaky", Port: "SPI0.1"},
		},
		PWM: []PWMConfig{{Name: "fan", Pin: "GPIO18"}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	res := Resources{
		Pins:   map[string]gpio.PinIO{"GPIO17": r.led, "GPIO22": r.inv, "GPIO27": r.btn, "GPIO18": r.fan},
		I2C:    map[string]i2c.Bus{"1": r.bus, "2": r.badBus},
		SPI:    map[string]spi.Port{"SPI0.0": r.spi, "SPI0.1": failPort{}},
		Errors: map[string]error{"7": errors.New("open /dev/i2c-7: no such file or directory")},
	}
	b, err := NewBoard("test", cfg, res, Options{Version: "v0.0.0-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	r.b = b
	return r
}

// loopPort is a minimal loopback spi.Port for spitest.Record to wrap.
type loopPort struct{}

func (loopPort) String() string                      { return "loop" }
func (loopPort) Close() error                        { return nil }
func (loopPort) LimitSpeed(f physic.Frequency) error { return nil }
func (loopPort) Connect(f physic.Frequency, m spi.Mode, bits int) (spi.Conn, error) {
	return loopConn{}, nil
}

type loopConn struct{}

func (loopConn) String() string                 { return "loop" }
func (loopConn) Duplex() conn.Duplex            { return conn.Full }
func (loopConn) Tx(w, r []byte) error           { copy(r, w); return nil }
func (loopConn) TxPackets(p []spi.Packet) error { return nil }

func (r *rig) exec(t *testing.T, ctx context.Context, method, params string) (json.RawMessage, error) {
	t.Helper()
	req := &protocol.Request{ID: "r1", Method: method, TimeoutMs: 1000}
	if params != "" {
		req.Params = json.RawMessage(params)
	}
	return r.b.Execute(ctx, req)
}

func failureCode(err error) string {
	var f *protocol.Failure
	if errors.As(err, &f) {
		return f.Code
	}
	if err != nil {
		return "non-failure: " + err.Error()
	}
	return ""
}

func TestExecute(t *testing.T) {
	tests := []struct {
		name, method, params string
		want                 string // JSON value, when no code
		code                 string // expected failure code
		msg                  string // substring of the failure message
	}{
		{name: "read output", method: "gpio.read", params: `{"pin":"led"}`, want: `{"level":"high"}`},
		{name: "read active low", method: "gpio.read", params: `{"pin":"inv"}`, want: `{"level":"low"}`},
		{name: "read input pulled up", method: "gpio.read", params: `{"pin":"button"}`, want: `{"level":"high"}`},
		{name: "read unknown pin", method: "gpio.read", params: `{"pin":"nope"}`, code: protocol.CodeNotFound, msg: `"nope"`},
		{name: "read missing pin", method: "gpio.read", params: `{}`, code: protocol.CodeBadParams, msg: "pin: required"},
		{name: "read pin of other kind", method: "gpio.read", params: `{"pin":"fan"}`, code: protocol.CodeNotPermitted, msg: "pwm"},
		{name: "read unavailable pin", method: "gpio.read", params: `{"pin":"ghost"}`, code: protocol.CodeHWError, msg: "GPIO5"},
		{name: "read unknown field", method: "gpio.read", params: `{"pin":"led","pni":1}`, code: protocol.CodeBadParams, msg: "pni: unknown field"},
		{name: "malformed params", method: "gpio.read", params: `[1,2]`, code: protocol.CodeBadParams, msg: "params"},
		{name: "write low", method: "gpio.write", params: `{"pin":"led","level":"low"}`, want: `{}`},
		{name: "write bool", method: "gpio.write", params: `{"pin":"led","level":true}`, want: `{}`},
		{name: "write number", method: "gpio.write", params: `{"pin":"led","level":0}`, want: `{}`},
		{name: "write input", method: "gpio.write", params: `{"pin":"button","level":"low"}`, code: protocol.CodeNotPermitted, msg: "input"},
		{name: "write bad level", method: "gpio.write", params: `{"pin":"led","level":"medium"}`, code: protocol.CodeBadParams, msg: "level"},
		{name: "write escaped level", method: "gpio.write", params: `{"pin":"led","level":"\u0068igh"}`, want: `{}`},
		{name: "write quoted level", method: "gpio.write", params: `{"pin":"led","level":"\"high\""}`, code: protocol.CodeBadParams, msg: "level"},
		{name: "write missing level", method: "gpio.write", params: `{"pin":"led"}`, code: protocol.CodeBadParams, msg: "level: required"},
		{name: "pulse ms", method: "gpio.pulse", params: `{"pin":"led","level":"low","duration":5}`, want: `{}`},
		{name: "pulse string", method: "gpio.pulse", params: `{"pin":"led","level":"low","duration":"5ms"}`, want: `{}`},
		{name: "pulse too long", method: "gpio.pulse", params: `{"pin":"led","level":"low","duration":"2m"}`, code: protocol.CodeBadParams, msg: "duration"},
		{name: "pulse zero", method: "gpio.pulse", params: `{"pin":"led","level":"low","duration":0}`, code: protocol.CodeBadParams, msg: "duration"},
		{name: "pulse bad duration", method: "gpio.pulse", params: `{"pin":"led","level":"low","duration":"soon"}`, code: protocol.CodeBadParams, msg: "duration"},
		{name: "pulse input", method: "gpio.pulse", params: `{"pin":"button","level":"low","duration":5}`, code: protocol.CodeNotPermitted},
		{name: "pwm fraction", method: "pwm.set", params: `{"pin":"fan","duty":0.25,"frequency":25000}`, want: `{}`},
		{name: "pwm strings", method: "pwm.set", params: `{"pin":"fan","duty":"50%","frequency":"1kHz"}`, want: `{}`},
		{name: "pwm duty over", method: "pwm.set", params: `{"pin":"fan","duty":1.5,"frequency":1000}`, code: protocol.CodeBadParams, msg: "duty"},
		{name: "pwm bad frequency", method: "pwm.set", params: `{"pin":"fan","duty":0.5,"frequency":"fast"}`, code: protocol.CodeBadParams, msg: "frequency"},
		{name: "pwm missing frequency", method: "pwm.set", params: `{"pin":"fan","duty":0.5}`, code: protocol.CodeBadParams, msg: "frequency: required"},
		{name: "pwm on gpio pin", method: "pwm.set", params: `{"pin":"led","duty":0.5,"frequency":1000}`, code: protocol.CodeNotPermitted},
		{name: "i2c read", method: "i2c.tx", params: `{"bus":"sensors","addr":72,"write":"00","read":2}`, want: `{"read":"a0a1"}`},
		{name: "i2c hex addr", method: "i2c.tx", params: `{"bus":"sensors","addr":"0x50","write":"0x0010"}`, want: `{"read":""}`},
		{name: "i2c addr not allowed", method: "i2c.tx", params: `{"bus":"sensors","addr":"0x49","read":1}`, code: protocol.CodeNotPermitted, msg: "0x49"},
		{name: "i2c odd hex", method: "i2c.tx", params: `{"bus":"sensors","addr":72,"write":"abc"}`, code: protocol.CodeBadParams, msg: "write: odd"},
		{name: "i2c invalid hex", method: "i2c.tx", params: `{"bus":"sensors","addr":72,"write":"zz"}`, code: protocol.CodeBadParams, msg: "write"},
		{name: "i2c read over limit", method: "i2c.tx", params: `{"bus":"sensors","addr":72,"read":257}`, code: protocol.CodeBadParams, msg: "read"},
		{name: "i2c read negative", method: "i2c.tx", params: `{"bus":"sensors","addr":72,"read":-1}`, code: protocol.CodeBadParams, msg: "read"},
		{name: "i2c nothing", method: "i2c.tx", params: `{"bus":"sensors","addr":72}`, code: protocol.CodeBadParams},
		{name: "i2c unknown bus", method: "i2c.tx", params: `{"bus":"9","addr":72,"read":1}`, code: protocol.CodeNotFound},
		{name: "i2c bus error", method: "i2c.tx", params: `{"bus":"broken","addr":16,"read":1}`, code: protocol.CodeHWError, msg: "remote I/O"},
		{name: "i2c bus missing", method: "i2c.tx", params: `{"bus":"absent","addr":16,"read":1}`, code: protocol.CodeHWError, msg: "/dev/i2c-7"},
		{name: "i2c addr 10-bit", method: "i2c.tx", params: `{"bus":"sensors","addr":1000,"read":1}`, code: protocol.CodeBadParams, msg: "addr"},
		{name: "spi loop", method: "spi.tx", params: `{"port":"adc","write":"0102ff"}`, want: `{"read":"0102ff"}`},
		{name: "spi read pads", method: "spi.tx", params: `{"port":"adc","write":"01","read":3}`, want: `{"read":"010000"}`},
		{name: "spi over limit", method: "spi.tx", params: `{"port":"adc","read":4097}`, code: protocol.CodeBadParams, msg: "read"},
		{name: "spi write over limit", method: "spi.tx", params: `{"port":"adc","write":"` + strings.Repeat("00", 4097) + `"}`, code: protocol.CodeBadParams, msg: "write"},
		{name: "spi port error", method: "spi.tx", params: `{"port":"flaky","write":"00"}`, code: protocol.CodeHWError, msg: "EIO"},
		{name: "spi unknown port", method: "spi.tx", params: `{"port":"SPI9","write":"00"}`, code: protocol.CodeNotFound},
		{name: "ping echoes", method: "sys.ping", params: `{"a":[1,2]}`, want: `{"a":[1,2]}`},
		{name: "ping null", method: "sys.ping", params: `null`, want: `{}`},
		{name: "ping absent", method: "sys.ping", want: `{}`},
		{name: "ping scalar", method: "sys.ping", params: `"hi"`, want: `"hi"`},
		{name: "unknown method", method: "gpio.explode", params: `{}`, code: protocol.CodeUnknownMethod},
	}
	r := newRig(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.method == "gpio.read" || tt.method == "gpio.write" {
				r.led.Out(gpio.High) // reset state shared by the table
			}
			got, err := r.exec(t, context.Background(), tt.method, tt.params)
			if tt.code != "" {
				if c := failureCode(err); c != tt.code {
					t.Fatalf("got code %q (err %v, value %s), want %q", c, err, got, tt.code)
				}
				if !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q does not mention %q", err, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestWriteDrivesPin(t *testing.T) {
	r := newRig(t, nil)
	if r.led.Read() != gpio.High {
		t.Fatal("initial level high not applied")
	}
	if r.inv.Read() != gpio.High {
		t.Fatal("active-low output should idle electrically high (logical low)")
	}
	ctx := context.Background()
	if _, err := r.exec(t, ctx, "gpio.write", `{"pin":"led","level":"low"}`); err != nil {
		t.Fatal(err)
	}
	if r.led.Read() != gpio.Low {
		t.Error("led not low after write")
	}
	if _, err := r.exec(t, ctx, "gpio.write", `{"pin":"inv","level":"high"}`); err != nil {
		t.Fatal(err)
	}
	if r.inv.Read() != gpio.Low {
		t.Error("active-low pin written high should be electrically low")
	}
	if _, err := r.exec(t, ctx, "pwm.set", `{"pin":"fan","duty":"25%","frequency":"25kHz"}`); err != nil {
		t.Fatal(err)
	}
	if r.fan.D != gpio.DutyMax/4 || r.fan.F != 25*physic.KiloHertz {
		t.Errorf("pwm got duty %v freq %v", r.fan.D, r.fan.F)
	}
}

func TestPulseRestores(t *testing.T) {
	r := newRig(t, nil)
	done := make(chan error, 1)
	go func() {
		_, err := r.exec(t, context.Background(), "gpio.pulse", `{"pin":"led","level":"low","duration":"50ms"}`)
		done <- err
	}()
	waitFor(t, func() bool { return r.led.Read() == gpio.Low })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r.led.Read() != gpio.High {
		t.Error("pulse did not restore the high level")
	}
}

func TestPulseTimeout(t *testing.T) {
	r := newRig(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := r.exec(t, ctx, "gpio.pulse", `{"pin":"led","level":"low","duration":"10s"}`)
	if c := failureCode(err); c != protocol.CodeTimeout {
		t.Fatalf("got %v, want timeout", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("pulse did not honour the deadline")
	}
	if r.led.Read() != gpio.High {
		t.Error("level not restored after a cut-short pulse")
	}
}

func TestPulseCanceled(t *testing.T) {
	r := newRig(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, func() bool { return r.led.Read() == gpio.Low })
		cancel()
	}()
	_, err := r.exec(t, ctx, "gpio.pulse", `{"pin":"led","level":"low","duration":"10s"}`)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestHaltDuringPulse(t *testing.T) {
	r := newRig(t, nil)
	done := make(chan error, 1)
	go func() {
		_, err := r.exec(t, context.Background(), "gpio.pulse", `{"pin":"led","level":"high","duration":"10s"}`)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the pulse start; the outcome is checked either way
	if err := r.b.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; failureCode(err) != protocol.CodeHWError && err != nil {
		t.Fatalf("pulse: %v", err)
	}
	if r.led.Read() != gpio.Low {
		t.Error("led not at safe level low after Halt")
	}
}

func TestHalt(t *testing.T) {
	r := newRig(t, nil)
	r.exec(t, context.Background(), "pwm.set", `{"pin":"fan","duty":1,"frequency":100}`)
	if err := r.b.Halt(); err != nil {
		t.Fatal(err)
	}
	if r.led.Read() != gpio.Low {
		t.Error("led not at safe low")
	}
	if r.inv.Read() != gpio.Low {
		t.Error("active-low pin with safe high should be electrically low")
	}
	if r.fan.Read() != gpio.Low {
		t.Error("pwm pin not driven low")
	}
}

func TestBusLockTimeout(t *testing.T) {
	r := newRig(t, nil)
	r.bus.block = make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := r.exec(t, context.Background(), "i2c.tx", `{"bus":"sensors","addr":72,"read":1}`)
		first <- err
	}()
	waitFor(t, func() bool { return len(r.b.buses["sensors"].lock) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := r.exec(t, ctx, "i2c.tx", `{"bus":"sensors","addr":72,"read":1}`)
	if c := failureCode(err); c != protocol.CodeTimeout {
		t.Fatalf("got %v, want timeout", err)
	}
	close(r.bus.block)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

func TestExpiredContext(t *testing.T) {
	r := newRig(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	if _, err := r.exec(t, ctx, "sys.ping", `{}`); failureCode(err) != protocol.CodeTimeout {
		t.Fatalf("got %v, want timeout", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := r.exec(t, ctx, "sys.ping", `{}`); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestI2CPlayback(t *testing.T) {
	pb := &i2ctest.Playback{
		Ops:       []i2ctest.IO{{Addr: 0x48, W: []byte{0x00}, R: []byte{0x17, 0x20}}},
		DontPanic: true,
	}
	cfg := Config{I2C: []I2CConfig{{Name: "s", Bus: "1", Addresses: []uint16{0x48}}}}
	b, err := NewBoard("t", cfg, Resources{I2C: map[string]i2c.Bus{"1": pb}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Execute(context.Background(), &protocol.Request{ID: "x", Method: "i2c.tx", Params: json.RawMessage(`{"bus":"s","addr":"0x48","write":"00","read":2}`)})
	if err != nil || string(got) != `{"read":"1720"}` {
		t.Fatalf("got %s, %v", got, err)
	}
	if err := b.Close(); err != nil { // Playback.Close checks every op ran
		t.Fatal(err)
	}
}

func TestSPIPlayback(t *testing.T) {
	pb := &spitest.Playback{Playback: conntest.Playback{
		Ops:       []conntest.IO{{W: []byte{0x01, 0x80, 0x00}, R: []byte{0x00, 0x03, 0xff}}},
		DontPanic: true,
	}}
	cfg := Config{SPI: []SPIConfig{{Name: "adc", Port: "SPI0.0"}}}
	b, err := NewBoard("t", cfg, Resources{SPI: map[string]spi.Port{"SPI0.0": pb}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.Execute(context.Background(), &protocol.Request{ID: "x", Method: "spi.tx", Params: json.RawMessage(`{"port":"adc","write":"018000"}`)})
	if err != nil || string(got) != `{"read":"0003ff"}` {
		t.Fatalf("got %s, %v", got, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPanicIsContained(t *testing.T) {
	pb := &i2ctest.Playback{} // DontPanic false: an unexpected Tx panics
	cfg := Config{I2C: []I2CConfig{{Name: "s", Bus: "1", Addresses: []uint16{0x48}}}}
	b, err := NewBoard("t", cfg, Resources{I2C: map[string]i2c.Bus{"1": pb}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Execute(context.Background(), &protocol.Request{ID: "x", Method: "i2c.tx", Params: json.RawMessage(`{"bus":"s","addr":72,"read":1}`)})
	if failureCode(err) != protocol.CodeInternal {
		t.Fatalf("got %v, want internal", err)
	}
	// The bus lock must have been released by the panicking request.
	pb.DontPanic = true
	pb.Ops = []i2ctest.IO{{Addr: 0x48, R: []byte{1}}}
	if _, err := b.Execute(context.Background(), &protocol.Request{ID: "y", Method: "i2c.tx", Params: json.RawMessage(`{"bus":"s","addr":72,"read":1}`)}); err != nil {
		t.Fatal(err)
	}
}

func TestDescribe(t *testing.T) {
	r := newRig(t, nil)
	board, methods, res := r.b.Describe()
	if board != "test" {
		t.Errorf("board %q", board)
	}
	want := []string{"gpio.pulse", "gpio.read", "gpio.write", "i2c.tx", "pwm.set", "spi.tx", "sys.info", "sys.ping"}
	if strings.Join(methods, ",") != strings.Join(want, ",") {
		t.Errorf("methods %v, want %v", methods, want)
	}
	avail := map[string]bool{}
	for _, x := range res {
		avail[x.Name] = x.Available
		if !x.Available && x.Error == "" {
			t.Errorf("%s unavailable without a reason", x.Name)
		}
	}
	for name, want := range map[string]bool{"led": true, "ghost": false, "sensors": true, "absent": false, "adc": true, "fan": true} {
		if avail[name] != want {
			t.Errorf("%s available=%v, want %v", name, avail[name], want)
		}
	}
	sysOnly, _ := NewBoard("empty", Config{}, Resources{}, Options{})
	if _, m, _ := sysOnly.Describe(); strings.Join(m, ",") != "sys.info,sys.ping" {
		t.Errorf("empty board methods %v", m)
	}
	if _, err := sysOnly.Execute(context.Background(), &protocol.Request{ID: "x", Method: "gpio.read", Params: json.RawMessage(`{"pin":"a"}`)}); failureCode(err) != protocol.CodeUnknownMethod {
		t.Errorf("gpio.read on a board without gpio: %v", err)
	}
}

func TestClosed(t *testing.T) {
	r := newRig(t, nil)
	r.b.Close()
	if _, err := r.exec(t, context.Background(), "sys.ping", `{}`); failureCode(err) != protocol.CodeHWError {
		t.Fatalf("got %v after Close", err)
	}
	if err := r.b.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// Only sys.ping is instant, and only while nothing makes every request
// wait: the agent runs instant methods on its reader goroutine.
func TestInstant(t *testing.T) {
	tests := []struct {
		name   string
		opts   Options
		method string
		want   bool
	}{
		{"ping", Options{}, MethodSysPing, true},
		{"info reads files", Options{}, MethodSysInfo, false},
		{"hardware", Options{}, MethodGPIOWrite, false},
		{"ping with delay", Options{Delay: time.Millisecond}, MethodSysPing, false},
		{"ping with exec log", Options{ExecLog: &strings.Builder{}}, MethodSysPing, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := NewBoard("t", Config{}, Resources{}, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := b.Instant(tt.method); got != tt.want {
				t.Errorf("Instant(%s) = %v, want %v", tt.method, got, tt.want)
			}
		})
	}
}
