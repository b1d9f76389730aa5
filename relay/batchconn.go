package relay

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// maxBatch is how many bytes a writer holds back before it writes them
// anyway: enough for a few dozen request frames in one write syscall, not
// so much that a busy connection keeps a large buffer or that a frame
// waits long behind the ones queued with it.
const maxBatch = 32 << 10

// batchBuffers lends batchConns their buffers, which are needed only while
// a writer drains its queue.
var batchBuffers = sync.Pool{New: func() any { return new([]byte) }}

// batchConn is the net.Conn that gorilla writes a WebSocket to. gorilla
// makes one write syscall per frame; a writer with several frames queued
// calls hold first, so that they are kept back and go out together in one
// write when it calls flush. Writes that come while no writer holds (the
// close frame gorilla answers from the reader, say) go straight through.
// gorilla serializes its own writes; mu also orders them with flush.
type batchConn struct {
	net.Conn

	// batching is true between hold and flush. It changes under mu, but
	// holding reads it without: only the owner of the write side holds
	// and flushes, and it must not wait for a write of the reader's.
	batching atomic.Bool

	mu sync.Mutex
	// Guarded by mu:
	buf *[]byte // held bytes; from batchBuffers while holding
	err error   // the error of a failed flush, returned ever after
}

// hold keeps the bytes written from now on until flush.
func (c *batchConn) hold() {
	c.mu.Lock()
	c.batching.Store(true)
	c.mu.Unlock()
}

// holding reports whether hold was called since the last flush.
func (c *batchConn) holding() bool { return c.batching.Load() }

// held reports how many bytes wait for flush.
func (c *batchConn) held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return 0
	}
	return len(*c.buf)
}

// flush writes the held bytes in one write that must end by deadline,
// and stops holding.
func (c *batchConn) flush(deadline time.Time) error {
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
	if cap(*buf) <= maxBatch*2 {
		batchBuffers.Put(buf)
	}
	return c.err
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.batching.Load() {
		return c.Conn.Write(p)
	}
	if c.buf == nil {
		c.buf = batchBuffers.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// SetWriteDeadline applies to the next write that reaches the connection.
// While holding there is none until flush, which sets its own deadline:
// the held frames go out in one write, which must not get the shorter
// deadline of whichever frame was held last (gorilla gives a pong 1s).
func (c *batchConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching.Load() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline is SetWriteDeadline for the write side.
func (c *batchConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// batchResponse is the ResponseWriter an upgrade sees: its Hijack hands
// gorilla the connection wrapped in a batchConn, and, with readBuffer set,
// a read buffer of that size instead of net/http's (see upgradeAgent).
type batchResponse struct {
	http.ResponseWriter
	readBuffer int

	conn *batchConn
	br   *bufio.Reader // set if readBuffer is
}

func (w *batchResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return c, rw, err
	}
	w.conn = &batchConn{Conn: c}
	if w.readBuffer == 0 || rw.Reader.Buffered() > 0 {
		// gorilla refuses a client that sent data before the handshake
		// completed; let it see net/http's reader to do so.
		return w.conn, rw, nil
	}
	w.br = bufio.NewReaderSize(c, w.readBuffer)
	return w.conn, bufio.NewReadWriter(w.br, rw.Writer), nil
}
