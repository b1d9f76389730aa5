package mock

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tetherhq/tether/hw"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/spi"
)

// BoardName is the board name the simulated board reports.
const BoardName = "mock"

// Wiring and peripherals of the simulated board.
const (
	WiredOut = "GPIO17" // output wired to WiredIn
	WiredIn  = "GPIO27" // input, both edges
	I2CBus   = "1"
	SPIPort  = "SPI0.0"
	TMP102   = 0x48
	EEPROM   = 0x50
)

// pwmPins are the pins with a PWM function on a Pi header.
var pwmPins = []string{"GPIO12", "GPIO13", "GPIO18", "GPIO19"}

// Options tunes the simulated board. The zero value is usable.
type Options struct {
	// Version is the agent version reported by sys.info.
	Version string
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// ExecLog, if set, is the path of a file to which the board appends one
	// line "<request id> <method>\n" per executed request, synced before
	// Execute returns. The file stays open until the board is closed.
	ExecLog string
	// Delay is artificial work time per request; it honours the request's
	// context.
	Delay time.Duration
}

// Config returns the configuration the simulated board is built from; it
// doubles as a description of the simulated header.
func Config() hw.Config {
	var c hw.Config
	for n := 2; n <= 27; n++ {
		name := fmt.Sprintf("GPIO%d", n)
		switch {
		case isPWM(name):
			c.PWM = append(c.PWM, hw.PWMConfig{Name: name, Pin: name})
		case name == WiredIn:
			c.GPIO = append(c.GPIO, hw.GPIOConfig{Name: name, Pin: name, Direction: "in", Pull: "none", Edge: "both"})
		default:
			c.GPIO = append(c.GPIO, hw.GPIOConfig{Name: name, Pin: name, Direction: "out", Initial: "low", Safe: "low"})
		}
	}
	c.I2C = []hw.I2CConfig{{Name: I2CBus, Bus: I2CBus, Addresses: []uint16{TMP102, EEPROM}}}
	c.SPI = []hw.SPIConfig{{Name: SPIPort, Port: SPIPort, Mode: 0, Speed: "1MHz", Bits: 8}}
	return c
}

func isPWM(name string) bool {
	for _, p := range pwmPins {
		if p == name {
			return true
		}
	}
	return false
}

// New returns a simulated Raspberry Pi board.
func New(opts Options) (*hw.Board, error) {
	res := hw.Resources{
		Pins: map[string]gpio.PinIO{},
		I2C:  map[string]i2c.Bus{I2CBus: newBus(time.Now)},
		SPI:  map[string]spi.Port{SPIPort: &loopback{name: SPIPort}},
	}
	in := newInputPin(WiredIn, 27)
	res.Pins[WiredIn] = in
	for n := 2; n <= 26; n++ {
		name := fmt.Sprintf("GPIO%d", n)
		p := &gpiotest.Pin{N: name, Num: n, Fn: "GPIO"}
		if name == WiredOut {
			res.Pins[name] = &wiredPin{Pin: p, to: in}
		} else {
			res.Pins[name] = p
		}
	}
	hopts := hw.Options{Version: opts.Version, Logger: opts.Logger, Delay: opts.Delay}
	if opts.ExecLog != "" {
		f, err := os.OpenFile(opts.ExecLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("hw/mock: exec log: %w", err)
		}
		hopts.ExecLog = f
	}
	b, err := hw.NewBoard(BoardName, Config(), res, hopts)
	if err != nil {
		if c, ok := hopts.ExecLog.(*os.File); ok {
			c.Close()
		}
		return nil, fmt.Errorf("hw/mock: %w", err)
	}
	return b, nil
}
