package relay

import (
	"bufio"
	"net"
	"net/http"

	"github.com/tetherhq/tether/internal/batchconn"
)

// batchResponse is the ResponseWriter an upgrade sees: its Hijack hands
// gorilla the connection wrapped in a batchconn.Conn (one write per
// batch of frames), and, with readBuffer set,
// a read buffer of that size instead of net/http's (see upgradeAgent).
type batchResponse struct {
	http.ResponseWriter
	readBuffer int

	conn *batchconn.Conn
	br   *bufio.Reader // set if readBuffer is
}

func (w *batchResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return c, rw, err
	}
	w.conn = batchconn.New(c)
	if w.readBuffer == 0 || rw.Reader.Buffered() > 0 {
		// gorilla refuses a client that sent data before the handshake
		// completed; let it see net/http's reader to do so.
		return w.conn, rw, nil
	}
	w.br = bufio.NewReaderSize(c, w.readBuffer)
	return w.conn, bufio.NewReadWriter(w.br, rw.Writer), nil
}
