package mock

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"periph.io/x/conn/v3/physic"
)

// errNACK is what a real bus reports when no device answers or a device
// rejects a byte.
var errNACK = errors.New("hw/mock: i2c: no ACK")

// device is one simulated I2C device: it handles a combined write-then-read
// transaction addressed to it.
type device interface {
	tx(w, r []byte) error
}

// bus is a simulated I2C bus. i2ctest.Playback replays a fixed script; the
// simulated devices need state, so the bus is implemented here (i2c.Bus is
// three methods).
type bus struct {
	mu sync.Mutex // one transaction at a time, like the wire
	// Guarded by mu:
	devs map[uint16]device
}

func newBus(now func() time.Time) *bus {
	return &bus{devs: map[uint16]device{
		TMP102: newTMP102(now),
		EEPROM: newEEPROM(),
	}}
}

func (b *bus) String() string                    { return "mock-i2c-" + I2CBus }
func (b *bus) SetSpeed(f physic.Frequency) error { return nil }
func (b *bus) Close() error                      { return nil }

// Tx runs one transaction.
func (b *bus) Tx(addr uint16, w, r []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.devs[addr]
	if d == nil {
		return fmt.Errorf("%w from address %#x", errNACK, addr)
	}
	return d.tx(w, r)
}

// TMP102 registers.
const (
	tmpTemp   = 0x00 // read-only, 12-bit, 0.0625 °C per LSB, left-justified
	tmpConfig = 0x01
	tmpTLow   = 0x02
	tmpTHigh  = 0x03
)

// tmp102 is a TMP102-style sensor. The first byte written selects the
// register; two more bytes write it (except the temperature). Reads return
// the selected register, most significant byte first. The temperature
// drifts slowly between 21 and 25 °C (a 10-minute sine) so that dashboards
// show something alive.
type tmp102 struct {
	now   func() time.Time
	start time.Time
	ptr   byte
	regs  [4]uint16
}

func newTMP102(now func() time.Time) *tmp102 {
	t := &tmp102{now: now, start: now()}
	t.regs[tmpConfig] = 0x60a0 // power-on defaults from the datasheet
	t.regs[tmpTLow] = 0x4b00   // 75 °C
	t.regs[tmpTHigh] = 0x5000  // 80 °C
	return t
}

// celsius is the simulated temperature now.
func (t *tmp102) celsius() float64 {
	phase := 2 * math.Pi * t.now().Sub(t.start).Seconds() / 600
	return 23 + 2*math.Sin(phase)
}

func (t *tmp102) tx(w, r []byte) error {
	if len(w) > 0 {
		if w[0] > tmpTHigh {
			return fmt.Errorf("%w: tmp102 has no register %#x", errNACK, w[0])
		}
		t.ptr = w[0]
		switch data := w[1:]; {
		case len(data) == 0:
		case len(data) == 2 && t.ptr != tmpTemp:
			t.regs[t.ptr] = uint16(data[0])<<8 | uint16(data[1])
		default:
			return fmt.Errorf("%w: tmp102 register %#x takes 2 bytes, got %d", errNACK, t.ptr, len(data))
		}
	}
	v := t.regs[t.ptr]
	if t.ptr == tmpTemp {
		v = uint16(int16(math.Round(t.celsius()/0.0625)) << 4)
	}
	for i := range r {
		r[i] = byte(v >> 8)
		if i%2 == 1 {
			r[i] = byte(v)
		}
	}
	return nil
}

// eepromSize is the 24C32's capacity.
const eepromSize = 4096

// eeprom is a 24C32-style EEPROM: a write starts with a 2-byte address
// (big endian; the top 4 bits are ignored), followed by data bytes written
// from there; reads continue from the current address. The address
// auto-increments and wraps at the end of memory. Unlike the real part,
// writes do not wrap within 32-byte pages, and take no time. Erased memory
// reads 0xff.
type eeprom struct {
	ptr uint16
	mem [eepromSize]byte
}

func newEEPROM() *eeprom {
	e := &eeprom{}
	for i := range e.mem {
		e.mem[i] = 0xff
	}
	return e
}

func (e *eeprom) tx(w, r []byte) error {
	switch {
	case len(w) == 1:
		return fmt.Errorf("%w: 24c32 needs a 2-byte address", errNACK)
	case len(w) >= 2:
		e.ptr = (uint16(w[0])<<8 | uint16(w[1])) % eepromSize
		for _, b := range w[2:] {
			e.mem[e.ptr] = b
			e.ptr = (e.ptr + 1) % eepromSize
		}
	}
	for i := range r {
		r[i] = e.mem[e.ptr]
		e.ptr = (e.ptr + 1) % eepromSize
	}
	return nil
}
