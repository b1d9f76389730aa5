package relay

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// Close codes the relay uses beyond RFC 6455's well-known ones.
const (
	// closeReplaced ends a session superseded by a newer one of the same
	// device. 1000 with a reason: the agent did nothing wrong, but it
	// should not fight the newer session either.
	closeReplaced = websocket.CloseNormalClosure
	// readLimitSlack multiplies MaxFrame into gorilla's hard read limit.
	// The reader enforces MaxFrame itself so that it can answer with an
	// error frame before closing with 1009; gorilla's limit only stops
	// frames so large that reading up to the limit would be wasted.
	readLimitSlack = 4
	// maxCloseReason is the longest close reason a control frame carries.
	maxCloseReason = 123
	// maxResultCommits bounds one session's results being committed at
	// once; beyond it the reader waits, which slows the agent down.
	maxResultCommits = 256
)

// session is one agent connection. The reader is the goroutine that calls
// run (started by handleAgent and owned by the server's tracker); the
// writer is the goroutine run starts and waits for.
type session struct {
	id     string
	device string
	conn   *websocket.Conn
	cfg    *Config
	hub    *hub
	log    *slog.Logger

	send       chan []byte   // control frames for the writer (welcome, ack, error)
	wake       chan struct{} // capacity 1: there may be requests or cancels to send
	quit       chan struct{} // closed by stop
	readerDone chan struct{} // closed when the reader returns

	stopOnce  sync.Once
	closeCode int    // written before quit is closed
	closeText string // written before quit is closed

	readBroken bool // owned by the reader: the connection failed to read

	// Results are committed off the reader, so a device with many credits
	// gets its results group-committed instead of one fsync after another;
	// commitSlots bounds how many are in flight, commits waits for them.
	commitSlots chan struct{}
	commits     sync.WaitGroup

	auth *agentAuth // how the agent authenticated; set before run

	// Guarded by hub.mu:
	credits int
	leases  map[string]*entry
	cancels []string // ids to send cancel frames for
}

// closing reports whether the session has been asked to stop.
func (s *session) closing() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

func newSession(conn *websocket.Conn, dev string, cfg *Config, h *hub) *session {
	id := newID("s")
	return &session{
		id:         id,
		device:     dev,
		conn:       conn,
		cfg:        cfg,
		hub:        h,
		log:        cfg.Logger.With("device", dev, "session", id),
		send:       make(chan []byte, cfg.SendQueue),
		wake:       make(chan struct{}, 1),
		quit:       make(chan struct{}),
		readerDone: make(chan struct{}),
		leases:     make(map[string]*entry),

		commitSlots: make(chan struct{}, maxResultCommits),
	}
}

// stop asks the session to end with a close frame carrying code and text.
// It never blocks and may be called any number of times; the first wins.
func (s *session) stop(code int, text string) {
	s.stopOnce.Do(func() {
		if len(text) > maxCloseReason {
			text = text[:maxCloseReason]
		}
		s.closeCode, s.closeText = code, text
		close(s.quit)
	})
}

// poke wakes the writer to look for work. It never blocks.
func (s *session) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run serves the session until it ends and returns after its writer has
// stopped and its leases are released.
func (s *session) run() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.writeLoop()
	}()
	s.readLoop()
	if !s.readBroken {
		s.drain()
	}
	close(s.readerDone)
	s.stop(websocket.CloseNormalClosure, "")
	s.commits.Wait()
	wg.Wait()
	s.hub.detach(s)
	s.log.Info("agent disconnected", "reason", s.closeText)
}

// enqueue hands m to the writer. It blocks while the send queue is full,
// which stops the reader until the writer catches up, and gives up once
// the session is stopping.
func (s *session) enqueue(m protocol.Message) bool {
	b, err := protocol.Encode(m)
	if err != nil {
		s.log.Error("encode", "type", m.MsgType(), "err", err)
		return false
	}
	select {
	case s.send <- b:
		return true
	case <-s.quit:
		return false
	}
}

// fail reports a protocol violation to the agent and ends the session.
func (s *session) fail(f *protocol.Failure, code int) {
	s.log.Warn("protocol violation", "code", f.Code, "msg", f.Message)
	s.enqueue(&protocol.Error{Code: f.Code, Message: f.Message})
	s.stop(code, f.Code)
}

// closeCodeFor maps a decode failure to a WebSocket close code.
func closeCodeFor(code string) int {
	switch code {
	case protocol.CodeTooLarge:
		return websocket.CloseMessageTooBig
	case protocol.CodeBadState:
		return websocket.ClosePolicyViolation
	default:
		return websocket.CloseProtocolError
	}
}

func (s *session) deadAfter() time.Duration { return protocol.DeadAfter(s.cfg.PingPeriod) }

func (s *session) readLoop() {
	c := s.conn
	c.SetReadLimit(int64(s.cfg.MaxFrame) * readLimitSlack)
	c.SetPongHandler(func(string) error {
		return c.SetReadDeadline(time.Now().Add(s.deadAfter()))
	})
	c.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))

	m, ok := s.readFrame(true)
	if !ok {
		return
	}
	hello, isHello := m.(*protocol.Hello)
	if !isHello {
		s.fail(protocol.Errorf(protocol.CodeBadState, "first frame must be hello, got %s", m.MsgType()), websocket.ClosePolicyViolation)
		return
	}
	if err := s.hub.attach(s, hello); err != nil {
		s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
		return
	}
	s.log.Info("agent connected", "agent", hello.Agent, "board", hello.Board, "running", len(hello.Running))
	s.enqueue(&protocol.Welcome{
		Session:  s.id,
		Device:   s.device,
		Relay:    s.cfg.Version,
		MaxFrame: s.cfg.MaxFrame,
		PingMs:   s.cfg.PingPeriod.Milliseconds(),
	})
	s.auth.welcomed()
	// Re-leased requests may have cancels pending.
	s.poke()

	for {
		m, ok := s.readFrame(false)
		if !ok {
			return
		}
		s.hub.seen(s)
		if !s.handle(m) {
			return
		}
	}
}

// handle acts on one frame after hello; it reports whether to go on.
func (s *session) handle(m protocol.Message) bool {
	switch m := m.(type) {
	case *protocol.Pull:
		s.hub.addCredits(s, m.N)
	case *protocol.Result:
		select {
		case s.commitSlots <- struct{}{}:
		case <-s.quit:
			return false
		}
		commit := s.hub.result(s, m)
		s.commits.Add(1)
		go func() {
			defer s.commits.Done()
			defer func() { <-s.commitSlots }()
			if err := commit(); err != nil {
				if !errors.Is(err, ErrClosed) {
					s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
				}
				return
			}
			// Acked only once committed; acks may overtake one another.
			s.enqueue(&protocol.Ack{IDs: []string{m.ID}})
		}()
	case *protocol.Event:
		if err := s.hub.event(s, m); err != nil {
			s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
			return false
		}
		return s.enqueue(&protocol.Ack{Events: m.Seq})
	case *protocol.Rotated:
		return s.auth.rotated(s)
	case *protocol.Error:
		s.log.Warn("agent reported an error", "code", m.Code, "msg", m.Message)
		s.stop(websocket.CloseNormalClosure, "")
		return false
	case *protocol.Hello:
		s.fail(protocol.Errorf(protocol.CodeBadState, "hello already received"), websocket.ClosePolicyViolation)
		return false
	default:
		s.fail(protocol.Errorf(protocol.CodeBadState, "%s is not sent by agents", m.MsgType()), websocket.ClosePolicyViolation)
		return false
	}
	return true
}

// readFrame reads and decodes the next frame. On failure it has already
// arranged for the session to end.
func (s *session) readFrame(first bool) (protocol.Message, bool) {
	typ, r, err := s.conn.NextReader()
	if err != nil {
		s.readFailed(err, first)
		return nil, false
	}
	if typ != websocket.TextMessage {
		s.fail(protocol.Errorf(protocol.CodeBadFrame, "binary frames are not part of %s", protocol.Version), websocket.CloseUnsupportedData)
		return nil, false
	}
	// Read one byte past the limit to tell "exactly max" from "too large"
	// without buffering the rest of an oversized frame.
	b, err := io.ReadAll(io.LimitReader(r, int64(s.cfg.MaxFrame)+1))
	if err != nil {
		s.readFailed(err, first)
		return nil, false
	}
	s.conn.SetReadDeadline(time.Now().Add(s.deadAfter()))
	m, err := protocol.Decode(b, s.cfg.MaxFrame)
	if err != nil {
		var f *protocol.Failure
		if !errors.As(err, &f) {
			f = protocol.Errorf(protocol.CodeBadFrame, "%v", err)
		}
		s.fail(f, closeCodeFor(f.Code))
		return nil, false
	}
	return m, true
}

// drain reads and discards until the agent answers the close frame (or
// the grace period ends), so the close handshake completes and no unread
// data turns the final close into a TCP reset that could swallow the error
// frame.
func (s *session) drain() {
	s.conn.SetReadDeadline(time.Now().Add(s.closeGrace()))
	for {
		_, r, err := s.conn.NextReader()
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}

func (s *session) closeGrace() time.Duration { return min(s.cfg.WriteTimeout, time.Second) }

func (s *session) readFailed(err error, first bool) {
	s.readBroken = true
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has already sent close 1009.
		s.stop(websocket.CloseMessageTooBig, "frame too large")
	case errors.As(err, &ne) && ne.Timeout() && first:
		s.fail(protocol.Errorf(protocol.CodeBadState, "no hello within %v", s.cfg.HelloTimeout), websocket.ClosePolicyViolation)
	case errors.As(err, &ne) && ne.Timeout():
		s.stop(websocket.CloseGoingAway, "no traffic")
	default:
		s.stop(websocket.CloseNormalClosure, "")
	}
	if _, ok := err.(*websocket.CloseError); !ok {
		s.log.Debug("read ended", "err", err)
	}
}

// writeLoop is the only code that writes to the connection.
func (s *session) writeLoop() {
	ping := time.NewTicker(s.cfg.PingPeriod)
	defer ping.Stop()
	defer s.conn.Close() // unblocks the reader

	for {
		select {
		case b := <-s.send:
			if !s.write(websocket.TextMessage, b) {
				return
			}
		case <-s.wake:
			// Control frames queued before the wake (welcome) go first.
			if !s.flushSend() {
				return
			}
			w, err := s.hub.takeWork(s)
			if err != nil {
				s.stop(websocket.CloseInternalServerErr, "relay storage failed")
				continue
			}
			if !s.writeWork(w) {
				return
			}
		case <-ping.C:
			if !s.write(websocket.PingMessage, nil) {
				return
			}
		case <-s.quit:
			s.flushSend()
			s.writeClose()
			return
		}
	}
}

func (s *session) writeWork(w work) bool {
	for _, id := range w.cancels {
		if !s.writeMsg(&protocol.Cancel{ID: id}) {
			return false
		}
	}
	for i := range w.requests {
		if !s.writeMsg(&w.requests[i]) {
			return false
		}
	}
	return true
}

func (s *session) writeMsg(m protocol.Message) bool {
	b, err := protocol.Encode(m)
	if err != nil {
		s.log.Error("encode", "type", m.MsgType(), "err", err)
		return true
	}
	return s.write(websocket.TextMessage, b)
}

// flushSend writes the control frames already queued, without waiting for
// more.
func (s *session) flushSend() bool {
	for {
		select {
		case b := <-s.send:
			if !s.write(websocket.TextMessage, b) {
				return false
			}
		default:
			return true
		}
	}
}

func (s *session) write(typ int, b []byte) bool {
	s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if err := s.conn.WriteMessage(typ, b); err != nil {
		s.log.Debug("write failed", "err", err)
		s.stop(websocket.CloseAbnormalClosure, "write failed")
		return false
	}
	return true
}

// writeClose sends the close frame and gives the agent a moment to answer
// it, so the connection ends with a clean close handshake.
func (s *session) writeClose() {
	if s.closeCode == websocket.CloseAbnormalClosure {
		return // the connection is already broken
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	err := s.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(s.closeCode, s.closeText))
	if err != nil {
		return
	}
	grace := time.NewTimer(s.closeGrace())
	defer grace.Stop()
	select {
	case <-s.readerDone:
	case <-grace.C:
	}
}
