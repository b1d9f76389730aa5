// Package batchconn lets a WebSocket writer send the frames it has queued
// with one write syscall instead of one per frame. gorilla/websocket
// writes every frame straight to its net.Conn; a Conn under it keeps
// what is written between Hold and Flush and sends it in one go. Both the
// relay's writers and the agent's use it.
package batchconn

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// MaxHeld is how many bytes a writer should hold before it flushes
// anyway: enough for a few dozen request frames in one write, not so much
// that a busy connection keeps a large buffer or that a frame waits long
// behind the ones queued with it.
const MaxHeld = 32 << 10

// buffers lends Conns their buffers, which are needed only while a writer
// drains its queue.
var buffers = sync.Pool{New: func() any { return new([]byte) }}

// Conn is the net.Conn gorilla writes a WebSocket to. A writer with
// several frames queued calls Hold first, so that they are kept back and
// go out together in one write when it calls Flush. Writes that come
// while nobody holds (a close frame or a pong gorilla answers from the
// reader, say) go straight through. gorilla serializes its own writes; mu
// also orders them with Flush.
type Conn struct {
	net.Conn

	// batching is true between Hold and Flush. It changes under mu, but
	// Holding reads it without: only the owner of the write side holds
	// and flushes, and it must not wait for a write of the reader's.
	batching atomic.Bool

	mu sync.Mutex
	// Guarded by mu:
	buf *[]byte // held bytes; from buffers while holding
	err error   // the error of a failed flush, returned ever after
}

// New returns c wrapped.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Hold keeps the bytes written from now on until Flush.
func (c *Conn) Hold() {
	c.mu.Lock()
	c.batching.Store(true)
	c.mu.Unlock()
}

// Holding reports whether Hold was called since the last Flush.
func (c *Conn) Holding() bool { return c.batching.Load() }

// Held reports how many bytes wait for Flush.
func (c *Conn) Held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return 0
	}
	return len(*c.buf)
}

// Flush writes the held bytes in one write that must end by deadline,
// and stops holding.
func (c *Conn) Flush(deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.batching.Load() {
		return c.err
	}
	c.batching.Store(false)
	buf := c.buf
	c.buf = nil
	if buf == nil {
		return c.err
	}
	if c.err == nil {
		c.Conn.SetWriteDeadline(deadline)
		_, c.err = c.Conn.Write(*buf)
	}
	*buf = (*buf)[:0]
	if cap(*buf) <= MaxHeld*2 {
		buffers.Put(buf)
	}
	return c.err
}

func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.batching.Load() {
		return c.Conn.Write(p)
	}
	if c.buf == nil {
		c.buf = buffers.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// SetWriteDeadline applies to the next write that reaches the connection.
// While holding there is none until Flush, which sets its own deadline:
// the held frames go out in one write, which must not get the shorter
// deadline of whichever frame was held last (gorilla gives a pong 1s).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching.Load() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline is SetWriteDeadline for the write side.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
