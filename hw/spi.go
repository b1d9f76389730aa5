package hw

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/spi"
)

// MaxSPITransfer bounds the bytes one spi.tx clocks (4096 is also the
// Linux spidev default buffer size).
const MaxSPITransfer = 4096

// spiPort is one configured SPI port, connected once at open.
type spiPort struct {
	cfg  SPIConfig
	conn spi.Conn // nil when unavailable
	err  error
	lock busLock
}

func newSPIPort(c SPIConfig) *spiPort {
	return &spiPort{cfg: c, lock: newBusLock()}
}

func (s *spiPort) connect(p spi.Port) error {
	speed, err := parseSpeed(s.cfg.Speed)
	if err != nil {
		return fmt.Errorf("hw: spi %s speed: %w", s.cfg.Name, err)
	}
	c, err := p.Connect(speed, spi.Mode(s.cfg.Mode), s.cfg.spiBits())
	if err != nil {
		return fmt.Errorf("hw: spi %s (%s) connect: %w", s.cfg.Name, s.cfg.Port, err)
	}
	s.conn = c
	return nil
}

type spiInfo struct {
	Port  string `json:"port"`
	Mode  int    `json:"mode"`
	Speed string `json:"speed"`
	Bits  int    `json:"bits"`
}

func (s *spiPort) info() *spiInfo {
	speed, _ := parseSpeed(s.cfg.Speed)
	return &spiInfo{Port: s.cfg.Port, Mode: s.cfg.Mode, Speed: speed.String(), Bits: s.cfg.spiBits()}
}

func (b *Board) spiTx(ctx context.Context, raw json.RawMessage) (any, error) {
	p, err := decodeParams(raw, "port", "write", "read")
	if err != nil {
		return nil, err
	}
	name, err := p.str("port")
	if err != nil {
		return nil, err
	}
	port, err := find(b, b.ports, KindSPI, "port", name)
	if err != nil {
		return nil, err
	}
	w, err := p.hexBytes("write", MaxSPITransfer)
	if err != nil {
		return nil, err
	}
	n, err := p.count("read", MaxSPITransfer)
	if err != nil {
		return nil, err
	}
	n = max(n, len(w))
	if n == 0 {
		return nil, protocol.Errorf(protocol.CodeBadParams, "write, read: nothing to transfer")
	}
	if port.err != nil {
		return nil, unavailable(KindSPI, name, port.err)
	}
	out := make([]byte, n)
	copy(out, w)
	in := make([]byte, n)
	if err := port.lock.lock(ctx); err != nil {
		return nil, fmt.Errorf("hw: waiting for spi %s: %w", name, err)
	}
	defer port.lock.unlock()
	if err := port.conn.Tx(out, in); err != nil {
		return nil, fmt.Errorf("hw: spi %s: %w", name, err)
	}
	return txResult{Read: hex.EncodeToString(in)}, nil
}
