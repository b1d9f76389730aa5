package agent

import (
	"net"
	"sync"
)

// batchMax bounds what a batch holds before it is written out anyway, so
// a long queue of large frames does not pile up in memory.
const batchMax = 64 << 10

// batchConn lets the writer send every frame it has queued with one write
// syscall instead of one per frame: a result and the pull that follows it
// usually leave together. gorilla/websocket writes each frame straight to
// the connection it was dialed with, so the batching happens underneath it
// (and underneath TLS, which then also writes its records in one go).
//
// Outside a batch, writes go straight through: the reader's pongs and a
// close frame must not wait for the writer.
type batchConn struct {
	net.Conn

	mu       sync.Mutex // guards the fields below
	batching bool
	buf      []byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= batchMax {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// begin starts collecting writes until flush.
func (c *batchConn) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// flush writes what was collected since begin, under the write deadline
// the last frame set, and ends the batch.
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.flushLocked()
}

func (c *batchConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > batchMax {
		c.buf = nil // one burst of large frames need not stay allocated
	} else {
		c.buf = c.buf[:0]
	}
	return err
}
