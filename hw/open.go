package hw

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"periph.io/x/conn/v3/driver/driverreg"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/spi"
	"periph.io/x/conn/v3/spi/spireg"
	"periph.io/x/host/v3/distro"
)

// gpioNodes are the device nodes periph reaches GPIO through: the kernel's
// character device (all boards, including the Pi 5) and the Pi's register
// window.
var gpioNodes = []string{"/dev/gpiochip0", "/dev/gpiomem"}

// Open initialises periph's host drivers and opens what cfg names on the
// real hardware. If GPIO pins are configured but every GPIO device node
// refuses this process, Open fails with an error (wrapping ErrGPIOAccess)
// naming the node and the group to join. A pin, bus or port that is missing
// or cannot be opened makes only that resource unavailable.
//
// Open touches global state (periph's driver registry), so only a program's
// main should call it.
func Open(cfg Config, opts Options) (*Board, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := driverreg.Init(); err != nil {
		return nil, fmt.Errorf("hw: init periph host drivers: %w", err)
	}
	if len(cfg.GPIO)+len(cfg.PWM) > 0 {
		if err := checkGPIOAccess(gpioNodes); err != nil {
			return nil, err
		}
	}
	res := Resources{
		Pins:   map[string]gpio.PinIO{},
		I2C:    map[string]i2c.Bus{},
		SPI:    map[string]spi.Port{},
		Errors: map[string]error{},
	}
	// Validate compares pins by the names the config gives; periph knows
	// several names for one pin (GPIO18 is also P1_12 on a Pi header), so
	// two entries may still name the same pin, and drive it at odds.
	real := map[string]string{} // the pin's own name → the name configured
	var dup error
	openPin := func(name string) {
		p := gpioreg.ByName(name)
		if p == nil {
			res.Errors[name] = fmt.Errorf("hw: pin %s not found by periph's GPIO drivers on this board", name)
			return
		}
		own := p
		if r, ok := p.(gpio.RealPin); ok {
			own = r.Real()
		}
		if other, ok := real[own.Name()]; ok && other != name && dup == nil {
			dup = fmt.Errorf("hw: config: pins %s and %s are the same pin (%s) on this board", other, name, own.Name())
		}
		real[own.Name()] = name
		res.Pins[name] = p
	}
	for _, g := range cfg.GPIO {
		openPin(g.Pin)
	}
	for _, p := range cfg.PWM {
		openPin(p.Pin)
	}
	if dup != nil {
		return nil, dup
	}
	var opened []io.Closer
	for _, c := range cfg.I2C {
		bus, err := i2creg.Open(c.Bus)
		if err != nil {
			res.Errors[c.Bus] = openError("i2c bus", c.Bus, "/dev/i2c-"+c.Bus, err)
			continue
		}
		res.I2C[c.Bus] = bus
		opened = append(opened, bus)
	}
	for _, c := range cfg.SPI {
		port, err := spireg.Open(c.Port)
		if err != nil {
			res.Errors[c.Port] = openError("spi port", c.Port, spidevNode(c.Port), err)
			continue
		}
		res.SPI[c.Port] = port
		opened = append(opened, port)
	}
	b, err := NewBoard(boardName(), cfg, res, opts)
	if err != nil {
		for _, c := range opened {
			c.Close()
		}
		return nil, err
	}
	return b, nil
}

// openError explains why a bus or port did not open, adding the device
// node's permission problem when there is one. A node that does not exist
// is told as such, with how to enable the interface on a Raspberry Pi:
// periph's own words for it ("did you forget to call Init()?") speak to
// programmers, not to whoever set up the board.
func openError(kind, name, node string, err error) error {
	if _, serr := os.Stat(node); errors.Is(serr, fs.ErrNotExist) {
		return fmt.Errorf("hw: open %s %s: %s does not exist; %s", kind, name, node, enableHint(kind))
	}
	if hint := nodeAccessProblem(node); hint != "" {
		return fmt.Errorf("hw: open %s %s: %s: %w", kind, name, hint, err)
	}
	return fmt.Errorf("hw: open %s %s: %w", kind, name, err)
}

// enableHint says how the kernel interface behind kind is turned on.
func enableHint(kind string) string {
	if strings.HasPrefix(kind, "spi") {
		return "is SPI enabled? On a Raspberry Pi: sudo raspi-config nonint do_spi 0 (or dtparam=spi=on in /boot/firmware/config.txt) and reboot"
	}
	return "is I2C enabled, and is this the bus number? On a Raspberry Pi: sudo raspi-config nonint do_i2c 0 (or dtparam=i2c_arm=on in /boot/firmware/config.txt) and reboot; the header's bus is 1"
}

// spidevNode maps periph's "SPI0.1" to "/dev/spidev0.1".
func spidevNode(port string) string {
	return "/dev/spidev" + strings.TrimPrefix(strings.ToUpper(port), "SPI")
}

// checkGPIOAccess fails when at least one GPIO node exists and every node
// that exists refuses this process. Nodes that do not exist are left to
// periph (a board without them simply has no such pins).
func checkGPIOAccess(nodes []string) error {
	var problems []string
	for _, n := range nodes {
		switch p := nodeAccessProblem(n); p {
		case "":
			if nodeExists(n) {
				return nil
			}
		default:
			problems = append(problems, p)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrGPIOAccess, strings.Join(problems, "; "))
}

// boardName is the device tree model ("Raspberry Pi 4 Model B Rev 1.4") or,
// off a device tree, the OS and architecture.
func boardName() string {
	if m := strings.TrimSpace(strings.Trim(distro.DTModel(), "\x00")); m != "" && !strings.Contains(m, "unknown") {
		return m
	}
	return runtime.GOOS + "/" + runtime.GOARCH
}
