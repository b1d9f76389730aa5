package hw

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../deploy/agent.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.GPIO) != 2 || len(c.I2C) != 1 || len(c.SPI) != 1 || len(c.PWM) != 1 {
		t.Fatalf("got %+v", c)
	}
	b := c.GPIO[1]
	if b.Name != "button" || b.Pull != "up" || b.Edge != "both" || b.Debounce != 20*time.Millisecond {
		t.Errorf("button %+v", b)
	}
	if a := c.I2C[0].Addresses; len(a) != 2 || a[0] != 0x48 || a[1] != 0x50 || c.I2C[0].Bus != "1" {
		t.Errorf("i2c %+v", c.I2C[0])
	}
	if s := c.SPI[0]; s.Port != "SPI0.0" || s.Speed != "1MHz" || s.Bits != 8 {
		t.Errorf("spi %+v", s)
	}
}

func TestConfigIgnoresOtherKeys(t *testing.T) {
	c, err := ParseConfig([]byte("relay: wss://example\ntoken_file: /etc/t\npwm:\n  - {name: fan, pin: GPIO18}\n"))
	if err != nil || len(c.PWM) != 1 {
		t.Fatalf("got %+v, %v", c, err)
	}
	for _, doc := range []string{"", "# nothing\n", "gpio:\n"} {
		if _, err := ParseConfig([]byte(doc)); err != nil {
			t.Errorf("%q: %v", doc, err)
		}
	}
}

const goodGPIO = `gpio:
  - name: led
    pin: GPIO17
    direction: out
  - name: button
    pin: GPIO27
    direction: %s
`

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		want      string // the complete first line of the error
	}{
		{"bad direction", strings.Replace(goodGPIO, "%s", "inn", 1), `line 7: gpio[1].direction: want in or out, got "inn"`},
		{"missing direction", "gpio:\n  - name: a\n    pin: GPIO2\n", `line 2: gpio[0].direction: required: in or out`},
		{"unknown field", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    edgy: both\n", `line 5: gpio[0].edgy: unknown field`},
		{"bad edge", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    edge: up\n", `line 5: gpio[0].edge: want rising, falling, both or none, got "up"`},
		{"bad pull", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    pull: sideways\n", `line 5: gpio[0].pull: want up, down or none, got "sideways"`},
		{"bad initial", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: out\n    initial: on\n", `line 5: gpio[0].initial: want high or low, got "on"`},
		{"pull on output", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: out\n    pull: up\n", `line 5: gpio[0].pull: only for inputs`},
		{"safe on input", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    safe: low\n", `line 5: gpio[0].safe: only for outputs`},
		{"bad debounce type", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    debounce: soon\n", `line 5: gpio[0].debounce: want a duration like 20ms, got "soon"`},
		{"debounce too long", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: in\n    debounce: 1m\n", `line 5: gpio[0].debounce: want 0 to 5s, got 1m0s`},
		{"bad active_low", "gpio:\n  - name: a\n    pin: GPIO2\n    direction: out\n    active_low: maybe\n", `line 5: gpio[0].active_low: want true or false, got "maybe"`},
		{"duplicate name", "gpio:\n  - {name: a, pin: GPIO2, direction: out}\npwm:\n  - {name: a, pin: GPIO3}\n", `line 4: pwm[0].name: "a" already used by gpio[0]`},
		{"duplicate pin", "gpio:\n  - {name: a, pin: GPIO2, direction: out}\npwm:\n  - {name: b, pin: GPIO2}\n", `line 4: pwm[0].pin: GPIO2 already used by gpio[0]`},
		{"missing name", "pwm:\n  - pin: GPIO2\n", `line 2: pwm[0].name: required`},
		{"repeated key", "pwm:\n  - name: a\n    name: b\n    pin: GPIO2\n", `line 3: pwm[0].name: repeated field`},
		{"i2c address range", "i2c:\n  - name: s\n    bus: \"1\"\n    addresses: [0x48, 0x80]\n", `line 4: i2c[0].addresses: want 7-bit addresses (0x00 to 0x7f), got 0x80`},
		{"i2c address type", "i2c:\n  - name: s\n    bus: \"1\"\n    addresses: 72\n", `line 4: i2c[0].addresses: want a list of addresses like [0x48, 0x50], got "72"`},
		{"i2c no addresses", "i2c:\n  - name: s\n    bus: \"1\"\n", `line 2: i2c[0].addresses: required: list the device addresses requests may reach`},
		{"i2c bus twice", "i2c:\n  - {name: s, bus: \"1\", addresses: [1]}\n  - {name: t, bus: \"1\", addresses: [2]}\n", `line 3: i2c[1].bus: 1 already used by i2c[0]`},
		{"spi mode", "spi:\n  - name: s\n    port: SPI0.0\n    mode: 4\n", `line 4: spi[0].mode: want 0 to 3, got 4`},
		{"spi speed", "spi:\n  - name: s\n    port: SPI0.0\n    speed: fast\n", `line 4: spi[0].speed: want a frequency like 1MHz, got "fast"`},
		{"spi bits", "spi:\n  - name: s\n    port: SPI0.0\n    bits: 64\n", `line 4: spi[0].bits: want 1 to 32, got 64`},
		{"section not a list", "gpio: {name: a}\n", `line 1: gpio: want a list`},
		{"entry not a mapping", "pwm:\n  - GPIO2\n", `line 2: pwm[0]: want a mapping`},
		{"top not a mapping", "- a\n- b\n", `line 1: want a mapping at the top level`},
		{"yaml syntax", "gpio: [\n", `yaml`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.doc))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("%v does not wrap ErrInvalidConfig", err)
			}
			first, _, _ := strings.Cut(err.Error(), "\n")
			if tt.want == "yaml" {
				if !strings.Contains(first, "line") {
					t.Errorf("syntax error without a line: %q", first)
				}
				return
			}
			if first != tt.want {
				t.Errorf("got  %q\nwant %q", first, tt.want)
			}
		})
	}
}

func TestLoadConfigNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(path, []byte(strings.Replace(goodGPIO, "%s", "inn", 1)), 0o644)
	_, err := LoadConfig(path)
	if want := path + `:7: gpio[1].direction: want in or out, got "inn"`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Line != 7 || ce.Field != "gpio[1].direction" {
		t.Errorf("ConfigError %+v", ce)
	}
}

func TestConfigAllErrorsReported(t *testing.T) {
	_, err := ParseConfig([]byte("gpio:\n  - {name: a, pin: GPIO2, direction: x}\n  - {name: b, pin: GPIO3, direction: y}\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 1 {
		t.Errorf("want two errors, got %v", err)
	}
}

func TestValidateInCode(t *testing.T) {
	err := Config{GPIO: []GPIOConfig{{Name: "a", Pin: "GPIO2", Direction: "sideways"}}}.Validate()
	if err == nil || err.Error() != `gpio[0].direction: want in or out, got "sideways"` {
		t.Errorf("got %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}

func FuzzParseConfig(f *testing.F) {
	if data, err := os.ReadFile("../deploy/agent.example.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(goodGPIO))
	f.Add([]byte("i2c:\n  - {name: s, bus: \"1\", addresses: [0x48]}\n"))
	f.Add([]byte("gpio: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		// Whatever parses must also pass the in-code validation.
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config fails Validate: %v", err)
		}
	})
}
