package hw

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/i2c"
)

// Transfer limits for i2c.tx. Real I2C devices rarely move more than a page
// at a time, and the result must fit a frame comfortably.
const (
	MaxI2CRead  = 256
	MaxI2CWrite = 256
)

// i2cBus is one configured I2C bus with its address allowlist.
type i2cBus struct {
	cfg   I2CConfig
	bus   i2c.Bus // nil when unavailable
	err   error
	allow map[uint16]bool
	lock  busLock
}

func newI2CBus(c I2CConfig, bus i2c.Bus) *i2cBus {
	b := &i2cBus{cfg: c, bus: bus, allow: map[uint16]bool{}, lock: newBusLock()}
	for _, a := range c.Addresses {
		b.allow[a] = true
	}
	return b
}

type i2cInfo struct {
	Bus       string   `json:"bus"`
	Addresses []string `json:"addresses"`
}

func (b *i2cBus) info() *i2cInfo {
	addrs := make([]string, len(b.cfg.Addresses))
	for i, a := range b.cfg.Addresses {
		addrs[i] = fmt.Sprintf("0x%02x", a)
	}
	return &i2cInfo{Bus: b.cfg.Bus, Addresses: addrs}
}

type txResult struct {
	Read string `json:"read"`
}

func (b *Board) i2cTx(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "bus", "addr", "write", "read")
	if err != nil {
		return nil, err
	}
	name, err := p.str("bus")
	if err != nil {
		return nil, err
	}
	bus, err := find(b, b.buses, KindI2C, "bus", name)
	if err != nil {
		return nil, err
	}
	addr, err := p.addr("addr")
	if err != nil {
		return nil, err
	}
	if !bus.allow[addr] {
		return nil, protocol.Errorf(protocol.CodeNotPermitted, "addr: %#x is not in the allowlist of bus %q", addr, name)
	}
	w, err := p.hexBytes("write", MaxI2CWrite)
	if err != nil {
		return nil, err
	}
	n, err := p.count("read", MaxI2CRead)
	if err != nil {
		return nil, err
	}
	if len(w) == 0 && n == 0 {
		return nil, protocol.Errorf(protocol.CodeBadParams, "write, read: nothing to transfer")
	}
	if bus.err != nil {
		return nil, unavailable(KindI2C, name, bus.err)
	}
	if err := bus.lock.lock(ctx); err != nil {
		return nil, fmt.Errorf("hw: waiting for i2c %s: %w", name, err)
	}
	defer bus.lock.unlock()
	r := make([]byte, n)
	if err := bus.bus.Tx(addr, w, r); err != nil {
		return nil, fmt.Errorf("hw: i2c %s addr %#x: %w", name, addr, err)
	}
	return txResult{Read: hex.EncodeToString(r)}, nil
}
