package mock

import (
	"fmt"
	"sync"

	"periph.io/x/conn/v3"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/spi"
)

// loopback is an SPI port with MOSI wired to MISO: every byte written is
// read back in the same transfer. (spitest.Playback replays a script, which
// does not fit a board that must answer whatever it is sent.)
type loopback struct {
	name string
	mu   sync.Mutex
	// Guarded by mu:
	connected bool
}

func (p *loopback) String() string                      { return p.name }
func (p *loopback) Close() error                        { return nil }
func (p *loopback) LimitSpeed(f physic.Frequency) error { return nil }

// Connect returns the port's single connection, like spidev.
func (p *loopback) Connect(f physic.Frequency, mode spi.Mode, bits int) (spi.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.connected {
		return nil, fmt.Errorf("hw/mock: %s: Connect called twice", p.name)
	}
	p.connected = true
	return loopConn{p.name}, nil
}

type loopConn struct{ name string }

func (c loopConn) String() string       { return c.name }
func (c loopConn) Duplex() conn.Duplex  { return conn.Full }
func (c loopConn) Tx(w, r []byte) error { clear(r); copy(r, w); return nil }
func (c loopConn) TxPackets(ps []spi.Packet) error {
	for _, p := range ps {
		if err := c.Tx(p.W, p.R); err != nil {
			return err
		}
	}
	return nil
}
