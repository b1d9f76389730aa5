package relay

import (
	"bufio"
	"errors"
	"net/http"

	"github.com/gorilla/websocket"
)

// agentReadBuffer is the read buffer of an agent connection; larger
// frames are read in several pieces. gorilla reads through it only if it
// is larger than 256 bytes (see upgradeAgent), and it must hold a whole
// control frame (131 bytes) for readControl.
const agentReadBuffer = 512

// upgradeAgent upgrades an agent's request with a read buffer the session
// owns, so that it can tell whether a frame is already buffered before it
// lets gorilla read (gorilla keeps its own buffer private). With
// ReadBufferSize 0, gorilla's Upgrade reuses the bufio.Reader that Hijack
// returns when it holds more than 256 bytes (server.go in
// gorilla/websocket v1.5.3); batchResponse returns one of ours, of
// agentReadBuffer bytes, instead of net/http's 4 KiB one. The connection
// gorilla writes to is a batchconn.Conn (conn.NetConn()).
func upgradeAgent(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (*websocket.Conn, *bufio.Reader, error) {
	aw := &batchResponse{ResponseWriter: w, readBuffer: agentReadBuffer}
	conn, err := u.Upgrade(aw, r, nil)
	if err != nil {
		return nil, nil, err
	}
	if aw.br == nil {
		conn.Close()
		return nil, nil, errors.New("relay: agent connection hijacked without its read buffer")
	}
	return conn, aw.br, nil
}

// upgradeError answers a handshake that gorilla refuses (no or a bad
// Sec-WebSocket-Key, another WebSocket version, a foreign origin) with the
// JSON error body of every other refusal, instead of gorilla's plain text.
func upgradeError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	code := codeBadRequest
	switch status {
	case http.StatusForbidden:
		code = codeForbidden
	case http.StatusMethodNotAllowed:
		code = codeMethodNotAllowed
	}
	w.Header().Set("Sec-WebSocket-Version", "13") // the one version spoken here
	writeError(w, status, code, reason.Error())
}

// Frame header bits (RFC 6455 section 5.2).
const (
	frameFin  = 0x80
	frameMask = 0x80
	opPing    = 0x9
	opPong    = 0xa
	// maxControlPayload is the longest payload of a control frame.
	maxControlPayload = 125
)

// readControl acts on a ping or pong at the head of the read buffer. gorilla
// reads control frames only inside NextReader, which then goes on to wait
// for a data frame: an agent's pong would pin a goroutine until the next
// data frame. Only well-formed control frames from a client (final,
// masked, no reserved bits, short) are taken here; anything else, close
// frames included, is left to gorilla, which also answers its errors.
// handled reports whether a frame was consumed (or reading failed); ok
// whether to go on.
func (s *session) readControl() (handled, ok bool) {
	h, err := s.br.Peek(2)
	if err != nil {
		s.readFailed(err, !s.hello)
		return true, false
	}
	if h[0] != frameFin|opPing && h[0] != frameFin|opPong {
		return false, true
	}
	if h[1]&frameMask == 0 || int(h[1]&^frameMask) > maxControlPayload {
		return false, true
	}
	n := 2 + 4 + int(h[1]&^frameMask)
	f, err := s.br.Peek(n)
	if err != nil {
		s.readFailed(err, !s.hello)
		return true, false
	}
	if f[0] == frameFin|opPing {
		var payload []byte
		if n > 6 {
			payload = make([]byte, n-6)
			for i := range payload {
				payload[i] = f[6+i] ^ f[2+i%4]
			}
		}
		s.pinged(payload)
	} else {
		s.extend() // as gorilla's pong handler would
	}
	s.br.Discard(n)
	return true, true
}
