package hw

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A bus or port whose device node does not exist says so, and how to turn
// the interface on, instead of periph's advice to programmers.
func TestOpenErrorForMissingNode(t *testing.T) {
	periphErr := errors.New("i2creg: no bus found; did you forget to call Init()?")
	missing := filepath.Join(t.TempDir(), "i2c-7")
	msg := openError("i2c bus", "7", missing, periphErr).Error()
	for _, want := range []string{missing + " does not exist", "do_i2c", "dtparam=i2c_arm=on"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "Init()") {
		t.Errorf("%q passes periph's advice on", msg)
	}
	if msg := openError("spi port", "SPI0.0", missing, periphErr).Error(); !strings.Contains(msg, "do_spi") {
		t.Errorf("spi: %q", msg)
	}
}
