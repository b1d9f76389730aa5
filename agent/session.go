package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/internal/batchconn"
	"github.com/tetherhq/tether/protocol"
)

// session is one live WebSocket connection to the relay. The reader runs in
// runSession's goroutine; the writer is the only goroutine that writes
// frames.
type session struct {
	conn  *websocket.Conn
	batch *batchconn.Conn // conn's connection underneath, for the writer
	ping  time.Duration
	// out carries encoded frames to the writer. It is sized so the whole
	// outbox fits; if it still fills up the relay is not reading, and the
	// session is dropped (everything unacknowledged stays in the outbox).
	out      chan []byte
	done     chan struct{} // closed when the reader stops
	failOnce sync.Once
	failed   chan struct{} // closed by fail to stop the writer
}

// send queues m for the writer without blocking.
func (s *session) send(m protocol.Message) {
	b, err := protocol.Encode(m)
	if err != nil {
		s.fail()
		return
	}
	select {
	case s.out <- b:
	default:
		s.fail()
	}
}

func (s *session) fail() { s.failOnce.Do(func() { close(s.failed) }) }

// refusal describes why a dial failed, as far as the relay told us.
type refusal struct {
	status     int
	retryAfter time.Duration
	reason     string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("relay answered %d: %s", r.status, r.reason)
}

// connLoop runs sessions back to back until ctx ends, waiting between them
// with jittered exponential backoff.
func (a *Agent) connLoop(ctx context.Context) {
	bo := newBackoff(a.cfg.BackoffInitial, a.cfg.BackoffMax)
	for {
		lasted, err := a.runSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if lasted >= a.cfg.HealthyAfter {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		var ref *refusal
		restart, restarting := restartDelay(err)
		switch {
		case restarting:
			// The relay is restarting and gave this agent its own moment
			// to come back; the backoff goes on from there if it is not.
			wait = restart
			a.log.Warn("relay restarting", "retry_in", wait.Round(time.Millisecond))
		case replaced(err):
			// Another agent runs with this device's credentials: the two
			// would take the session from each other over and over, and
			// each could run a request the other had started.
			wait = a.cfg.BackoffMax
			a.log.Error("ANOTHER AGENT IS CONNECTED WITH THIS DEVICE'S CREDENTIALS: the relay gave the session to it; "+
				"two agents of one device can each run the other's requests; stop one. Retrying at the backoff cap",
				"retry_in", wait)
		case errors.Is(err, ErrRefused):
			wait = a.cfg.BackoffMax
			a.log.Error("RELAY REFUSED THIS DEVICE: check the token and the relay version; retrying at the backoff cap",
				"err", err, "retry_in", wait)
		case errors.As(err, &ref) && ref.retryAfter > 0:
			// Never earlier than asked; the jitter spreads the agents
			// told the same whole second over that second.
			wait = max(wait, ref.retryAfter+rand.N(time.Second))
			a.log.Warn("relay busy", "err", err, "retry_in", wait)
		default:
			a.log.Warn("relay connection lost", "err", err, "retry_in", wait.Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// replaced reports whether err ended a session that the relay handed to a
// newer connection of the same device.
func replaced(err error) bool {
	var ce *websocket.CloseError
	return errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure && ce.Text == protocol.ReplacedReason
}

// restartDelay returns the reconnect delay a relay's close frame asked
// for, if err ended a session with one.
func restartDelay(err error) (time.Duration, bool) {
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		return 0, false
	}
	return protocol.ParseRestart(ce.Code, ce.Text)
}

// runSession dials, shakes hands and serves one session until it ends.
// lasted is how long the session ran after its welcome: zero if the
// handshake did not complete, and never counting the dial, so that a
// relay slow to answer does not pass for a healthy session.
func (a *Agent) runSession(ctx context.Context) (lasted time.Duration, err error) {
	conn, batch, err := a.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	welcome, err := a.handshake(conn)
	if err != nil {
		return 0, err
	}
	began := time.Now()
	a.relayFrame.Store(int64(welcome.MaxFrame))
	ping := time.Duration(welcome.PingMs) * time.Millisecond
	if ping <= 0 {
		ping = a.cfg.PingPeriod
	}
	s := &session{
		conn:   conn,
		batch:  batch,
		ping:   ping,
		out:    make(chan []byte, 2*a.cfg.OutboxLimit+a.cfg.Credits+64),
		done:   make(chan struct{}),
		failed: make(chan struct{}),
	}
	a.log.Info("connected to relay", "session", welcome.Session, "device", welcome.Device, "relay", welcome.Relay)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.writer(ctx, s)
	}()
	a.attach(s, welcome.LastEvent)
	err = a.reader(s)
	a.detach(s)
	close(s.done)
	wg.Wait()
	return time.Since(began), err
}

func (a *Agent) dial(ctx context.Context) (*websocket.Conn, *batchconn.Conn, error) {
	var batch *batchconn.Conn
	d := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: a.cfg.HandshakeTimeout,
		Subprotocols:     []string{protocol.Version},
		TLSClientConfig:  a.cfg.TLS,
		// As gorilla dials by default, but keeping hold of the connection
		// so that the writer can batch its frames.
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			batch = batchconn.New(c)
			return batch, nil
		},
	}
	hdr := http.Header{}
	if tok := a.token.get(); tok != "" {
		hdr.Set("Authorization", "Bearer "+tok)
	}
	conn, resp, err := d.DialContext(ctx, a.cfg.Relay, hdr)
	if err != nil {
		if resp == nil {
			return nil, nil, fmt.Errorf("agent: dial %s: %w", a.cfg.Relay, err)
		}
		ref := &refusal{status: resp.StatusCode, reason: resp.Status}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			ref.retryAfter = time.Duration(s) * time.Second
		}
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusBadRequest:
			return nil, nil, fmt.Errorf("%w: %w", ErrRefused, ref)
		}
		return nil, nil, ref
	}
	if conn.Subprotocol() != protocol.Version {
		conn.Close()
		return nil, nil, fmt.Errorf("%w: relay did not agree to subprotocol %s", ErrRefused, protocol.Version)
	}
	conn.SetReadLimit(int64(a.cfg.MaxFrame))
	return conn, batch, nil
}

// handshake sends hello and waits for welcome.
func (a *Agent) handshake(conn *websocket.Conn) (*protocol.Welcome, error) {
	b, err := protocol.Encode(a.hello())
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(a.cfg.HandshakeTimeout)
	conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return nil, fmt.Errorf("agent: send hello: %w", err)
	}
	conn.SetReadDeadline(deadline)
	_, frame, err := conn.ReadMessage()
	if err != nil {
		return nil, fmt.Errorf("agent: wait for welcome: %w", err)
	}
	m, err := protocol.Decode(frame, a.cfg.MaxFrame)
	if err != nil {
		return nil, fmt.Errorf("agent: welcome: %w", err)
	}
	switch m := m.(type) {
	case *protocol.Welcome:
		return m, nil
	case *protocol.Error:
		if m.Code == protocol.CodeUnknownType || m.Code == "unsupported_version" {
			return nil, fmt.Errorf("%w: %s: %s", ErrRefused, m.Code, m.Message)
		}
		return nil, fmt.Errorf("agent: relay error %s: %s", m.Code, m.Message)
	default:
		return nil, fmt.Errorf("agent: expected welcome, got %s", m.MsgType())
	}
}

// reader reads frames until the connection fails. It owns the read
// deadline: every frame, ping or pong from the relay pushes it forward, so
// a link that goes silent is dropped after 2.5 ping periods.
func (a *Agent) reader(s *session) error {
	dead := protocol.DeadAfter(s.ping)
	extend := func() { s.conn.SetReadDeadline(time.Now().Add(dead)) }
	extend()
	s.conn.SetPongHandler(func(string) error { extend(); return nil })
	s.conn.SetPingHandler(func(data string) error {
		extend()
		err := s.conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(a.cfg.WriteTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	// The relay may send frames up to the limit its welcome announced
	// (SPEC §2), which may be above the agent's own.
	limit := max(a.cfg.MaxFrame, int(a.relayFrame.Load()))
	s.conn.SetReadLimit(int64(limit))
	// One buffer for every frame: Decode copies what it keeps.
	var buf bytes.Buffer
	for {
		typ, r, err := s.conn.NextReader()
		if err == nil && typ != websocket.TextMessage {
			return a.violationClose(s, protocol.Errorf(protocol.CodeBadFrame, "binary frames are not part of %s", protocol.Version), websocket.CloseUnsupportedData)
		}
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			return fmt.Errorf("agent: read: %w", err)
		}
		frame := buf.Bytes()
		extend()
		m, err := protocol.Decode(frame, limit)
		if err != nil {
			return a.violation(s, err)
		}
		switch m := m.(type) {
		case *protocol.Request:
			a.onRequest(s, m)
		case *protocol.Cancel:
			a.onCancel(m.ID)
		case *protocol.Ack:
			a.onAck(m)
		case *protocol.Rotate:
			a.onRotate(s, m)
		case *protocol.Error:
			return fmt.Errorf("agent: relay reported %s: %s", m.Code, m.Message)
		default:
			return a.violation(s, protocol.Errorf(protocol.CodeBadState, "%s is not sent to agents", m.MsgType()))
		}
	}
}

// violation reports a protocol error to the relay and ends the session
// with the close code SPEC §4 gives its error code.
func (a *Agent) violation(s *session, err error) error { return a.violationClose(s, err, 0) }

// violationClose is violation with close code code, unless it is 0.
func (a *Agent) violationClose(s *session, err error, code int) error {
	var f *protocol.Failure
	if !errors.As(err, &f) {
		f = protocol.Errorf(protocol.CodeBadFrame, "%v", err)
	}
	a.log.Warn("protocol violation by relay", "code", f.Code, "msg", f.Message)
	b, _ := protocol.Encode(&protocol.Error{Code: f.Code, Message: f.Message})
	deadline := time.Now().Add(a.cfg.WriteTimeout)
	// The writer may be mid-frame; WriteControl is safe concurrently, a
	// data frame is not, so the error text travels in the close reason.
	switch {
	case code != 0:
	case f.Code == protocol.CodeTooLarge:
		code = websocket.CloseMessageTooBig
	case f.Code == protocol.CodeBadState:
		code = websocket.ClosePolicyViolation
	default:
		code = websocket.CloseProtocolError
	}
	reason := string(b)
	if len(reason) > 120 {
		reason = reason[:120]
	}
	s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), deadline)
	return fmt.Errorf("agent: %w", err)
}

// writer is the only goroutine writing data frames. It sends queued frames
// and pings, and on shutdown a polite close frame.
func (a *Agent) writer(ctx context.Context, s *session) {
	tick := time.NewTicker(s.ping)
	defer tick.Stop()
	write := func(typ int, b []byte) bool {
		s.conn.SetWriteDeadline(time.Now().Add(a.cfg.WriteTimeout))
		if err := s.conn.WriteMessage(typ, b); err != nil {
			s.conn.Close() // unblocks the reader
			return false
		}
		return true
	}
	// writeQueued writes b and whatever else is queued by now (up to
	// batchconn.MaxHeld bytes) in one go; it never waits for more.
	writeQueued := func(b []byte) bool {
		s.batch.Hold()
		ok := write(websocket.TextMessage, b)
		for ok && len(s.out) > 0 && s.batch.Held() < batchconn.MaxHeld {
			ok = write(websocket.TextMessage, <-s.out)
		}
		if err := s.batch.Flush(time.Now().Add(a.cfg.WriteTimeout)); err != nil && ok {
			s.conn.Close()
			ok = false
		}
		return ok
	}
	for {
		select {
		case b := <-s.out:
			if !writeQueued(b) {
				return
			}
		case <-tick.C:
			if !write(websocket.PingMessage, nil) {
				return
			}
		case <-s.failed:
			a.log.Warn("relay is not reading; dropping the session")
			s.conn.Close()
			return
		case <-s.done:
			return
		case <-ctx.Done():
			write(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "agent shutting down"))
			// Let the reader see the relay's close reply, but not forever.
			s.conn.SetReadDeadline(time.Now().Add(time.Second))
			<-s.done
			return
		}
	}
}
