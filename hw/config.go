package hw

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"periph.io/x/conn/v3/physic"

	yaml "github.com/tetherhq/tether/internal/yamlite"
)

// Config names the peripherals a board exposes. It is meant to be embedded
// inline in the agent's configuration file, so its keys (gpio, i2c, spi, pwm)
// sit at the top level of that file. The zero value exposes nothing.
type Config struct {
	GPIO []GPIOConfig `yaml:"gpio,omitempty"`
	I2C  []I2CConfig  `yaml:"i2c,omitempty"`
	SPI  []SPIConfig  `yaml:"spi,omitempty"`
	PWM  []PWMConfig  `yaml:"pwm,omitempty"`
}

// GPIOConfig is one GPIO pin used as a digital input or output.
type GPIOConfig struct {
	// Name is the resource name used in requests and events.
	Name string `yaml:"name"`
	// Pin is the periph pin name, e.g. "GPIO17".
	Pin string `yaml:"pin"`
	// Direction is "in" or "out".
	Direction string `yaml:"direction"`
	// Initial is the level an output is driven to when the board opens,
	// which is when the agent starts (after a crash too): "high" or "low"
	// (default low).
	Initial string `yaml:"initial,omitempty"`
	// Safe is the level an output is driven to by Halt, which the agent
	// calls when it stops (default: Initial).
	Safe string `yaml:"safe,omitempty"`
	// ActiveLow inverts the pin: logical high is electrical low.
	ActiveLow bool `yaml:"active_low,omitempty"`
	// Pull is the input's pull resistor: "up", "down" or "none" (default).
	Pull string `yaml:"pull,omitempty"`
	// Edge selects which input edges become gpio.edge events: "rising",
	// "falling", "both" or "none" (default). Edges are logical levels.
	Edge string `yaml:"edge,omitempty"`
	// Debounce is how long an input must settle after an edge before its
	// level is reported (0: report every edge).
	Debounce time.Duration `yaml:"debounce,omitempty"`
}

// I2CConfig is one I2C bus and the device addresses requests may reach on it.
type I2CConfig struct {
	// Name is the resource name used in requests.
	Name string `yaml:"name"`
	// Bus is the periph bus name, e.g. "1" for /dev/i2c-1.
	Bus string `yaml:"bus"`
	// Addresses is the allowlist of 7-bit device addresses.
	Addresses []uint16 `yaml:"addresses"`
}

// SPIConfig is one SPI port (bus and chip select).
type SPIConfig struct {
	// Name is the resource name used in requests.
	Name string `yaml:"name"`
	// Port is the periph port name, e.g. "SPI0.0" for /dev/spidev0.0.
	Port string `yaml:"port"`
	// Mode is the SPI mode, 0 to 3.
	Mode int `yaml:"mode,omitempty"`
	// Speed is the clock, e.g. "1MHz" (default 1MHz).
	Speed string `yaml:"speed,omitempty"`
	// Bits is the word size (default 8).
	Bits int `yaml:"bits,omitempty"`
}

// PWMConfig is one pin driven by pwm.set.
type PWMConfig struct {
	// Name is the resource name used in requests.
	Name string `yaml:"name"`
	// Pin is the periph pin name, e.g. "GPIO18".
	Pin string `yaml:"pin"`
}

// Defaults applied to fields left empty.
const (
	defaultSPISpeed = physic.MegaHertz
	defaultSPIBits  = 8
	// maxDebounce keeps a typo ("20s" for "20ms") from silencing an input.
	maxDebounce = 5 * time.Second
)

// DefaultConfig returns a fresh Config that exposes no hardware.
func DefaultConfig() Config { return Config{} }

// ConfigError is one problem in a configuration, located by file, line and
// field path (e.g. "gpio[1].direction"). It wraps ErrInvalidConfig.
type ConfigError struct {
	File  string // empty when the config did not come from a named file
	Line  int    // 0 when unknown (a Config built in code)
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap lets errors.Is(err, ErrInvalidConfig) match.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// ParseConfig decodes and validates the hardware keys of a YAML document.
// Top-level keys other than gpio, i2c, spi and pwm are ignored: they belong
// to the program embedding the Config. All problems are reported together,
// each as a *ConfigError with its line.
func ParseConfig(data []byte) (Config, error) {
	return parseConfig("", data)
}

// LoadConfig reads and parses the file at path; errors name the file.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("hw: %w", err)
	}
	return parseConfig(path, data)
}

func parseConfig(file string, data []byte) (Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		var se *yaml.SyntaxError
		if errors.As(err, &se) {
			return Config{}, &ConfigError{File: file, Line: se.Line, Msg: se.Msg}
		}
		return Config{}, &ConfigError{File: file, Msg: err.Error()}
	}
	return ConfigFromNode(file, &doc)
}

// ConfigFromNode decodes and validates the hardware keys from an already
// parsed YAML document or mapping node, so a program that parses its own
// file can embed a Config and still get errors with line numbers. file only
// labels the errors.
func ConfigFromNode(file string, n *yaml.Node) (Config, error) {
	d := decoder{file: file, lines: map[string]int{}}
	c := d.root(n)
	d.errs = append(d.errs, validate(c, d.lines, file)...)
	if len(d.errs) > 0 {
		return Config{}, errors.Join(d.errs...)
	}
	return c, nil
}

// Validate checks a Config built in code. Its errors carry no line numbers.
func (c Config) Validate() error {
	return errors.Join(validate(c, nil, "")...)
}

// decoder turns YAML nodes into a Config, remembering the line of every
// field so that validation can point at it.
type decoder struct {
	file  string
	lines map[string]int // field path → line
	errs  []error
}

func (d *decoder) fail(line int, field, format string, args ...any) {
	d.errs = append(d.errs, &ConfigError{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) root(n *yaml.Node) Config {
	var c Config
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return c
		}
		n = n.Content[0]
	}
	if n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
		return c
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, "", "want a mapping at the top level")
		return c
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "gpio":
			for j, e := range d.seq(key.Value, val) {
				var g GPIOConfig
				d.entry(fmt.Sprintf("gpio[%d]", j), e, []field{
					{"name", &g.Name}, {"pin", &g.Pin}, {"direction", &g.Direction},
					{"initial", &g.Initial}, {"safe", &g.Safe}, {"active_low", &g.ActiveLow},
					{"pull", &g.Pull}, {"edge", &g.Edge}, {"debounce", &g.Debounce},
				})
				c.GPIO = append(c.GPIO, g)
			}
		case "i2c":
			for j, e := range d.seq(key.Value, val) {
				var b I2CConfig
				d.entry(fmt.Sprintf("i2c[%d]", j), e, []field{
					{"name", &b.Name}, {"bus", &b.Bus}, {"addresses", &b.Addresses},
				})
				c.I2C = append(c.I2C, b)
			}
		case "spi":
			for j, e := range d.seq(key.Value, val) {
				var s SPIConfig
				d.entry(fmt.Sprintf("spi[%d]", j), e, []field{
					{"name", &s.Name}, {"port", &s.Port}, {"mode", &s.Mode},
					{"speed", &s.Speed}, {"bits", &s.Bits},
				})
				c.SPI = append(c.SPI, s)
			}
		case "pwm":
			for j, e := range d.seq(key.Value, val) {
				var p PWMConfig
				d.entry(fmt.Sprintf("pwm[%d]", j), e, []field{
					{"name", &p.Name}, {"pin", &p.Pin},
				})
				c.PWM = append(c.PWM, p)
			}
		}
	}
	return c
}

// seq returns the items of a sequence node; null means no items.
func (d *decoder) seq(field string, n *yaml.Node) []*yaml.Node {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n.Line, field, "want a list")
		return nil
	}
	return n.Content
}

// field is one key of a config entry and where its value goes. A list,
// not a map literal: each map literal costs the Pi Zero's binary code of
// its own.
type field struct {
	name string
	ptr  any
}

// entry decodes one mapping node into the field pointers, rejecting unknown
// and repeated keys (a typo must not silently fall back to a default).
func (d *decoder) entry(path string, n *yaml.Node, fields []field) {
	d.lines[path] = n.Line
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "want a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		field := path + "." + key.Value
		var ptr any
		for _, f := range fields {
			if f.name == key.Value {
				ptr = f.ptr
			}
		}
		if ptr == nil {
			d.fail(key.Line, field, "unknown field")
			continue
		}
		if seen[key.Value] {
			d.fail(key.Line, field, "repeated field")
			continue
		}
		seen[key.Value] = true
		d.lines[field] = val.Line
		if err := val.Decode(ptr); err != nil {
			d.fail(val.Line, field, "want %s, got %q", typeName(ptr), val.Value)
		}
	}
}

func typeName(ptr any) string {
	switch ptr.(type) {
	case *string:
		return "a string"
	case *bool:
		return "true or false"
	case *int:
		return "an integer"
	case *time.Duration:
		return "a duration like 20ms"
	case *[]uint16:
		return "a list of addresses like [0x48, 0x50]"
	}
	return fmt.Sprintf("%T", ptr)
}

// validator collects semantic errors, placing each at the line of its field
// (or of its entry when the field is absent).
type validator struct {
	file  string
	lines map[string]int
	errs  []error
	// names maps every resource name to its field path, to reject duplicates.
	names map[string]string
	// pins maps every periph pin to its field path: one pin, one use.
	pins map[string]string
	// devs maps every bus and port to its field path: each is opened once.
	devs map[string]string
}

func (v *validator) fail(entry, key, format string, args ...any) {
	field := entry
	if key != "" {
		field += "." + key
	}
	line, ok := v.lines[field]
	if !ok {
		line = v.lines[entry]
	}
	v.errs = append(v.errs, &ConfigError{File: v.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) name(entry, name string) {
	switch {
	case name == "":
		v.fail(entry, "name", "required")
	case strings.ContainsAny(name, " \t\r\n") || len(name) > 64:
		v.fail(entry, "name", "want at most 64 characters without spaces, got %q", name)
	case v.names[name] != "":
		v.fail(entry, "name", "%q already used by %s", name, v.names[name])
	default:
		v.names[name] = entry
	}
}

// device checks that a bus or port is named and configured once.
func (v *validator) device(entry, field, kind, dev string) {
	key := kind + " " + dev
	switch {
	case dev == "":
		v.fail(entry, field, "required")
	case v.devs[key] != "":
		v.fail(entry, field, "%s already used by %s", dev, v.devs[key])
	default:
		v.devs[key] = entry
	}
}

func (v *validator) pin(entry, pin string) {
	switch {
	case pin == "":
		v.fail(entry, "pin", "required")
	case v.pins[pin] != "":
		v.fail(entry, "pin", "%s already used by %s", pin, v.pins[pin])
	default:
		v.pins[pin] = entry
	}
}

func (v *validator) oneOf(entry, key, got string, want ...string) {
	for _, w := range want {
		if got == w {
			return
		}
	}
	v.fail(entry, key, "want %s, got %q", orList(want), got)
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

func validate(c Config, lines map[string]int, file string) []error {
	v := validator{file: file, lines: lines, names: map[string]string{}, pins: map[string]string{}, devs: map[string]string{}}
	for i, g := range c.GPIO {
		e := fmt.Sprintf("gpio[%d]", i)
		v.name(e, g.Name)
		v.pin(e, g.Pin)
		switch g.Direction {
		case "out":
			if g.Initial != "" {
				v.oneOf(e, "initial", g.Initial, "high", "low")
			}
			if g.Safe != "" {
				v.oneOf(e, "safe", g.Safe, "high", "low")
			}
			if g.Pull != "" {
				v.fail(e, "pull", "only for inputs")
			}
			if g.Edge != "" {
				v.fail(e, "edge", "only for inputs")
			}
			if g.Debounce != 0 {
				v.fail(e, "debounce", "only for inputs")
			}
		case "in":
			if g.Initial != "" {
				v.fail(e, "initial", "only for outputs")
			}
			if g.Safe != "" {
				v.fail(e, "safe", "only for outputs")
			}
			if g.Pull != "" {
				v.oneOf(e, "pull", g.Pull, "up", "down", "none")
			}
			if g.Edge != "" {
				v.oneOf(e, "edge", g.Edge, "rising", "falling", "both", "none")
			}
			if g.Debounce < 0 || g.Debounce > maxDebounce {
				v.fail(e, "debounce", "want 0 to %s, got %s", maxDebounce, g.Debounce)
			}
		case "":
			v.fail(e, "direction", "required: in or out")
		default:
			v.fail(e, "direction", "want in or out, got %q", g.Direction)
		}
	}
	for i, b := range c.I2C {
		e := fmt.Sprintf("i2c[%d]", i)
		v.name(e, b.Name)
		v.device(e, "bus", "i2c", b.Bus)
		if len(b.Addresses) == 0 {
			v.fail(e, "addresses", "required: list the device addresses requests may reach")
		}
		seen := map[uint16]bool{}
		for _, a := range b.Addresses {
			if a > 0x7f {
				v.fail(e, "addresses", "want 7-bit addresses (0x00 to 0x7f), got %#x", a)
			} else if seen[a] {
				v.fail(e, "addresses", "%#x listed twice", a)
			}
			seen[a] = true
		}
	}
	for i, s := range c.SPI {
		e := fmt.Sprintf("spi[%d]", i)
		v.name(e, s.Name)
		v.device(e, "port", "spi", s.Port)
		if s.Mode < 0 || s.Mode > 3 {
			v.fail(e, "mode", "want 0 to 3, got %d", s.Mode)
		}
		if _, err := parseSpeed(s.Speed); err != nil {
			v.fail(e, "speed", "%v", err)
		}
		if s.Bits < 0 || s.Bits > 32 {
			v.fail(e, "bits", "want 1 to 32, got %d", s.Bits)
		}
	}
	for i, p := range c.PWM {
		e := fmt.Sprintf("pwm[%d]", i)
		v.name(e, p.Name)
		v.pin(e, p.Pin)
	}
	return v.errs
}

// parseSpeed parses an SPI clock such as "1MHz"; empty means the default.
func parseSpeed(s string) (physic.Frequency, error) {
	if s == "" {
		return defaultSPISpeed, nil
	}
	var f physic.Frequency
	if err := f.Set(s); err != nil {
		return 0, fmt.Errorf("want a frequency like 1MHz, got %q", s)
	}
	if f <= 0 || f > 200*physic.MegaHertz {
		return 0, fmt.Errorf("want more than 0 and at most 200MHz, got %s", f)
	}
	return f, nil
}

// spiBits returns the configured word size or the default.
func (s SPIConfig) spiBits() int {
	if s.Bits == 0 {
		return defaultSPIBits
	}
	return s.Bits
}
