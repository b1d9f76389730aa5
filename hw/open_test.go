package hw

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

func TestAccessMessage(t *testing.T) {
	msg := accessMessage("/dev/gpiochip0", fs.ModeDevice|0o660, "gpio", false)
	for _, want := range []string{"/dev/gpiochip0", "group gpio", "not in group gpio", "usermod -aG gpio"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
}

func TestCheckGPIOAccessMissingNodes(t *testing.T) {
	dir := t.TempDir()
	if err := checkGPIOAccess([]string{filepath.Join(dir, "gpiochip0"), filepath.Join(dir, "gpiomem")}); err != nil {
		t.Errorf("missing nodes are not an access problem: %v", err)
	}
}

func TestSpidevNode(t *testing.T) {
	if got := spidevNode("SPI0.1"); got != "/dev/spidev0.1" {
		t.Error(got)
	}
}

// TestOpenWithoutHardware opens the real host drivers; on a machine without
// the configured devices every resource must come back unavailable, with a
// reason, instead of failing Open.
func TestOpenWithoutHardware(t *testing.T) {
	cfg := Config{
		GPIO: []GPIOConfig{{Name: "led", Pin: "GPIO_NO_SUCH_PIN", Direction: "out"}},
		I2C:  []I2CConfig{{Name: "s", Bus: "99", Addresses: []uint16{0x48}}},
		SPI:  []SPIConfig{{Name: "adc", Port: "SPI99.0"}},
	}
	b, err := Open(cfg, Options{})
	if errors.Is(err, ErrGPIOAccess) {
		t.Skipf("GPIO nodes refused on this machine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, _, res := b.Describe()
	for _, r := range res {
		if r.Available || r.Error == "" {
			t.Errorf("%+v: want unavailable with a reason", r)
		}
	}
}

// Two entries that name one pin by two of its names (a header position
// and a GPIO number, say) are refused when the board opens: the config's
// own check compares names only.
func TestOpenRefusesOnePinTwice(t *testing.T) {
	pin := &gpiotest.Pin{N: "TEST_GPIO_OPEN_ALIAS", Num: 1018}
	gpioreg.Unregister("TEST_P1_OPEN_ALIAS") // from an earlier run (-count)
	gpioreg.Unregister(pin.Name())
	if err := gpioreg.Register(pin); err != nil {
		t.Fatal(err)
	}
	if err := gpioreg.RegisterAlias("TEST_P1_OPEN_ALIAS", pin.Name()); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		GPIO: []GPIOConfig{{Name: "led", Pin: "TEST_GPIO_OPEN_ALIAS", Direction: "out"}},
		PWM:  []PWMConfig{{Name: "fan", Pin: "TEST_P1_OPEN_ALIAS"}},
	}
	b, err := Open(cfg, Options{})
	if errors.Is(err, ErrGPIOAccess) {
		t.Skipf("GPIO nodes refused on this machine: %v", err)
	}
	if err == nil {
		b.Close()
		t.Fatal("one pin configured twice, by two names, was accepted")
	}
	if !strings.Contains(err.Error(), "same pin") {
		t.Fatalf("error %v", err)
	}
}
