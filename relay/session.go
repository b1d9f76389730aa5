package relay

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/internal/batchconn"
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

// session is one agent connection. Most sessions are idle most of the
// time, so an idle session holds no goroutine: its connection is watched
// by its loop (reactor.go), which starts a read turn when the connection
// is readable and runs its timers (pings, the silence limit). A writer
// goroutine runs only while there is something to write. Where the
// connection cannot be watched (TLS, or not Linux), one reader goroutine
// blocks on it for the life of the session instead.
//
// Only one read turn (or the blocking reader) runs at a time, and only one
// goroutine writes at a time: a writer, or at the end the finisher.
// stop starts the finisher, which closes the connection politely, waits
// for every goroutine of the session and then detaches it.
type session struct {
	id     string
	device string
	conn   *websocket.Conn
	out    *batchconn.Conn // what conn writes to: the writer batches its frames
	br     *bufio.Reader   // the connection's read buffer, shared with gorilla
	cfg    *Config
	hub    *hub

	quit     chan struct{} // closed by stop
	stopOnce sync.Once
	// Written before quit is closed:
	closeCode int
	closeText string

	auth *agentAuth // how the agent authenticated; set before start

	// Set by start, before the session is shared with its loop:
	react  *reactor
	loop   *loop
	onDone func() // called last, once the session has ended
	fd     int32  // the watched socket; valid while polled
	key    uint32 // the loop's key for fd
	polled bool   // read turns are started by the loop

	// Owned by the goroutine that reads (a read turn or the blocking
	// reader); read turns take over from one another through mu.
	commitSlots chan struct{} // made on the first result
	// Results are committed off the reader, so a device with many credits
	// gets its results group-committed instead of one fsync after another;
	// commitSlots bounds how many are in flight, commits waits for them.
	commits sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu:
	started    bool
	finishing  bool          // the finisher runs
	queue      [][]byte      // control frames for the writer (welcome, ack, error)
	space      chan struct{} // closed when queue has room; made by a waiting producer
	pong       []byte        // payload of the pong to send
	pongDue    bool
	pingDue    bool
	workDue    bool          // there may be requests or cancels to send
	writing    bool          // a writer (or the finisher) owns the write side
	reading    bool          // a read turn or the blocking reader runs
	readDone   bool          // the read side has ended (drained, broken or silent)
	readBroken bool          // the connection failed to read: no close handshake
	readClosed bool          // no more read turns: the finisher closes the connection
	hello      bool          // hello was received; written by the reader
	readBy     time.Duration // the read deadline, on the loop's clock
	pingAt     time.Duration // the next ping, on the loop's clock
	changed    chan struct{} // made by the finisher: reading, writing or readDone changed
	// acks are committed results not yet acknowledged: they go out in
	// ack frames with the next frames the writer writes, or on their own
	// once ackAt (the loop's clock; 0: no timer set) has passed or they
	// fill a frame, either of which sets ackDue (see ackLater). ackSize
	// is their size in an ack frame.
	acks    []string
	ackSize int
	ackAt   time.Duration
	ackDue  bool

	// Guarded by loop.mu:
	due       time.Duration // when the loop next ticks s
	slot      int           // index in the loop's timers, -1 if absent
	forgotten bool          // the loop dropped s for good (forget)

	// Guarded by hub.mu:
	credits int
	leases  map[string]*entry
	cancels []string // ids to send cancel frames for
	// pulled is set by the first pull: its agent has sent, before it,
	// every result it kept from earlier sessions (see hub.cancel).
	pulled bool
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

// newSession makes the session of conn, which upgradeAgent made.
func newSession(conn *websocket.Conn, br *bufio.Reader, dev string, cfg *Config, h *hub) *session {
	id := newID("s")
	return &session{
		id:     id,
		device: dev,
		conn:   conn,
		out:    conn.NetConn().(*batchconn.Conn),
		br:     br,
		cfg:    cfg,
		hub:    h,
		quit:   make(chan struct{}),
		leases: make(map[string]*entry),
		slot:   -1,
	}
}

// log returns the session's logger. It is made for each use: slog's With
// formats its attributes ahead, which costs every idle session hundreds
// of bytes for lines logged at its start and end.
func (s *session) log() *slog.Logger {
	return s.cfg.Logger.With("device", s.device, "session", s.id)
}

// start puts the session to work on r; onDone runs once it has ended and
// everything it started has stopped.
func (s *session) start(r *reactor, onDone func()) {
	l, err := r.acquire()
	if err != nil {
		s.log().Error("agent session not started", "err", err)
		s.conn.Close()
		onDone()
		return
	}
	s.react, s.loop, s.onDone = r, l, onDone

	c := s.conn
	c.SetReadLimit(int64(s.cfg.MaxFrame) * readLimitSlack)
	c.SetPongHandler(func(string) error {
		s.extend()
		return nil
	})
	c.SetPingHandler(func(payload string) error {
		s.pinged([]byte(payload))
		return nil
	})
	now := time.Now()
	helloBy := now.Add(s.cfg.HelloTimeout)
	c.SetReadDeadline(helloBy)
	s.mu.Lock()
	s.readBy = helloBy.Sub(l.base)
	s.pingAt = now.Add(s.cfg.PingPeriod).Sub(l.base)
	due := min(s.readBy, s.pingAt)
	s.mu.Unlock()

	if !l.watch(s) {
		s.mu.Lock()
		s.reading = true
		s.mu.Unlock()
		go s.readBlocking()
	}
	l.schedule(s, due)

	s.mu.Lock()
	s.started = true
	s.finishLocked()
	s.mu.Unlock()
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
	s.mu.Lock()
	s.finishLocked()
	s.mu.Unlock()
}

// finishLocked starts the finisher once the session is started and
// stopped.
func (s *session) finishLocked() {
	if s.started && !s.finishing && s.closing() {
		s.finishing = true
		go s.finish()
	}
}

// signalLocked tells the finisher that reading, writing or readDone changed.
func (s *session) signalLocked() {
	if s.changed != nil {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
}

// awaitLocked waits with mu held until cond holds or limit fires (nil:
// no limit), and reports whether cond holds. Only the finisher waits.
func (s *session) awaitLocked(cond func() bool, limit <-chan time.Time) bool {
	for !cond() {
		s.mu.Unlock()
		select {
		case <-s.changed:
		case <-limit:
			s.mu.Lock()
			return cond()
		}
		s.mu.Lock()
	}
	return true
}

// finish ends the session: it takes over the write side, sends what is
// queued and the close frame, gives the agent a moment to answer it, then
// closes the connection, waits for the reader and the commits, and
// detaches the session from the hub.
func (s *session) finish() {
	s.mu.Lock()
	s.changed = make(chan struct{}, 1)
	s.awaitLocked(func() bool { return !s.writing }, nil)
	s.writing = true
	s.mu.Unlock()

	if s.flushQueue() && s.writeClose() {
		grace := time.NewTimer(s.closeGrace())
		s.mu.Lock()
		s.awaitLocked(func() bool { return s.readDone }, grace.C)
		s.mu.Unlock()
		grace.Stop()
	}

	s.mu.Lock()
	s.readClosed = true
	s.mu.Unlock()
	s.loop.forget(s)
	s.conn.Close() // unblocks a read still under way
	s.mu.Lock()
	s.awaitLocked(func() bool { return !s.reading }, nil)
	s.mu.Unlock()

	s.commits.Wait()
	s.hub.detach(s)
	s.log().Info("agent disconnected", "reason", s.closeText)
	s.react.release(s.loop)
	s.onDone()
}

// poke wakes the writer to look for work. It never blocks.
func (s *session) poke() {
	s.mu.Lock()
	s.workDue = true
	s.kickLocked()
	s.mu.Unlock()
}

// kickLocked starts a writer if there is something to write and no
// goroutine owns the write side.
func (s *session) kickLocked() {
	if s.writing || s.closing() {
		return
	}
	if len(s.queue) == 0 && !s.pongDue && !s.workDue && !s.pingDue && !s.ackDue {
		return
	}
	s.writing = true
	if s.started {
		s.loop.work.run(s.writeLoop)
	} else {
		go s.writeLoop() // before start, there is no loop yet
	}
}

// ackDelay is how long the ack of a committed result may wait for
// another frame to the agent to ride with. The agent keeps the result
// until then; with results and requests flowing, an ack costs no write
// and no wakeup of its own.
const ackDelay = 5 * time.Millisecond

// ackFrameMax bounds an ack frame's ids, in bytes, below the largest
// frame the agent accepts (the welcome's MaxFrame, at least 1 KiB).
const ackFrameMax = 16 << 10

// ackRoom is how many bytes of ids one ack frame carries.
func (s *session) ackRoom() int { return min(s.cfg.MaxFrame, ackFrameMax) - 64 }

// ackLen is what id adds to an ack frame: its JSON string and a comma.
func ackLen(id string) int { return jsonLen(id) + 1 }

// ackLater acknowledges result id, committed, with the writer's next
// frames, or on its own after ackDelay or once the waiting acks fill a
// frame. A writer run that writes nothing else leaves it waiting: an ack
// alone costs a write here and a wakeup on the board, and on the path of
// a sequential caller it would go out just before the result the caller
// waits for.
func (s *session) ackLater(id string) {
	s.mu.Lock()
	s.acks = append(s.acks, id)
	s.ackSize += ackLen(id)
	if s.ackSize >= s.ackRoom() && !s.ackDue && !s.closing() {
		s.ackDue = true
		s.kickLocked()
		s.mu.Unlock()
		return
	}
	at, ok := s.armAckLocked()
	s.mu.Unlock()
	if ok {
		s.loop.scheduleBy(s, at)
	}
}

// armAckLocked sets the ack timer if acks wait without one, and returns
// when it is due and whether the caller must schedule it. A closing
// session's finisher takes the acks along; one that has already written
// its last frames leaves them unsent, and the agent resends the results
// to its next session, which acks them at once.
func (s *session) armAckLocked() (time.Duration, bool) {
	if len(s.acks) == 0 || s.ackAt != 0 || s.ackDue || s.closing() {
		return 0, false
	}
	s.ackAt = s.loop.now() + ackDelay
	return s.ackAt, true
}

// takeAcksLocked returns an ack frame of the oldest waiting acks, as many
// as fit in one, and removes them. Acks left over keep their timer, or
// stay due.
func (s *session) takeAcksLocked() *protocol.Ack {
	n, size, room := 0, 0, s.ackRoom()
	if s.ackSize <= room { // the usual case: all of them, measured already
		n, size = len(s.acks), s.ackSize
	}
	for n < len(s.acks) && (n == 0 || size+ackLen(s.acks[n]) <= room) {
		size += ackLen(s.acks[n])
		n++
	}
	m := &protocol.Ack{IDs: s.acks[:n:n]}
	s.acks, s.ackSize = s.acks[n:], s.ackSize-size
	if len(s.acks) == 0 {
		s.acks, s.ackAt, s.ackDue = nil, 0, false
	}
	return m
}

// enqueue hands m to the writer. It blocks while the send queue is full,
// which stops the reader until the writer catches up, and gives up once
// the session is stopping.
func (s *session) enqueue(m protocol.Message) bool {
	b, err := protocol.Encode(m)
	if err != nil {
		s.log().Error("encode", "type", m.MsgType(), "err", err)
		return false
	}
	return s.push(b, true)
}

// push queues b for the writer. With wait it blocks while the queue is
// full; without, it fails at once. It fails once the session is stopping.
func (s *session) push(b []byte, wait bool) bool {
	s.mu.Lock()
	for len(s.queue) >= s.cfg.SendQueue && !s.closing() {
		if !wait {
			s.mu.Unlock()
			return false
		}
		if s.space == nil {
			s.space = make(chan struct{})
		}
		space := s.space
		s.mu.Unlock()
		select {
		case <-space:
		case <-s.quit:
			return false
		}
		s.mu.Lock()
	}
	if s.closing() {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, b)
	s.kickLocked()
	s.mu.Unlock()
	return true
}

// popLocked takes the oldest queued frame.
func (s *session) popLocked() []byte {
	b := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // an idle session keeps no queue
	}
	if s.space != nil {
		close(s.space)
		s.space = nil
	}
	return b
}

// fail reports a protocol violation to the agent and ends the session.
func (s *session) fail(f *protocol.Failure, code int) {
	s.log().Warn("protocol violation", "code", f.Code, "msg", f.Message)
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

// extend pushes the read deadline forward after traffic from the agent.
// The loop reads readBy to drop a silent session that no read turn waits
// on; the connection's deadline bounds a read under way.
func (s *session) extend() {
	t := time.Now().Add(s.deadAfter())
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hello {
		// The hello timeout stands until hello: a peer that only answers
		// pings, or sends its own, must not hold a connection without
		// ever saying who it is.
		return
	}
	s.conn.SetReadDeadline(t)
	s.readBy = t.Sub(s.loop.base)
}

// pinged answers an agent's ping: it is traffic, as a pong is, and its
// pong goes out through the writer, the connection's only writer.
func (s *session) pinged(payload []byte) {
	s.extend()
	s.mu.Lock()
	s.pong, s.pongDue = payload, true
	s.kickLocked()
	s.mu.Unlock()
}

// tick runs the session's timers at now (on the loop's clock) and returns
// when it needs the next tick: it queues a ping every PingPeriod, and
// drops the session when its read deadline passed with no read under way
// (a read under way is bounded by the connection's deadline instead).
func (s *session) tick(now time.Duration) time.Duration {
	s.mu.Lock()
	if s.closing() {
		s.mu.Unlock()
		return now + time.Hour // the finisher forgets s
	}
	if now >= s.readBy && !s.reading && !s.readDone {
		hello := s.hello
		s.readBroken, s.readDone = true, true
		var errFrame []byte
		if !hello {
			f := protocol.Errorf(protocol.CodeBadState, "no hello within %v", s.cfg.HelloTimeout)
			errFrame, _ = protocol.Encode(&protocol.Error{Code: f.Code, Message: f.Message})
			if errFrame != nil {
				s.queue = append(s.queue, errFrame)
			}
		}
		s.mu.Unlock()
		if hello {
			s.log().Debug("read ended", "err", "no traffic")
			s.stop(websocket.CloseGoingAway, "no traffic")
		} else {
			s.log().Warn("protocol violation", "code", protocol.CodeBadState, "msg", "no hello")
			s.stop(websocket.ClosePolicyViolation, protocol.CodeBadState)
		}
		return now + time.Hour
	}
	if now >= s.pingAt {
		s.pingDue = true
		s.pingAt = now + s.cfg.PingPeriod
		s.kickLocked()
	}
	if s.ackAt != 0 && now >= s.ackAt {
		s.ackAt, s.ackDue = 0, true
		s.kickLocked()
	}
	next := s.pingAt
	if s.ackAt != 0 {
		next = min(next, s.ackAt)
	}
	if !s.reading && !s.readDone {
		next = min(next, s.readBy)
	}
	s.mu.Unlock()
	return next
}

// readable starts a read turn; the loop calls it when the connection has
// data (or an error) to read.
func (s *session) readable() {
	s.mu.Lock()
	if s.reading || s.readDone || s.readClosed {
		s.mu.Unlock()
		return
	}
	s.reading = true
	s.mu.Unlock()
	s.loop.work.run(s.readTurn)
}

// readTurn reads the frames at hand, then has the loop watch the
// connection again.
func (s *session) readTurn() {
	more := s.readFrames(false)
	var err error
	s.mu.Lock()
	s.reading = false
	if more && !s.readClosed {
		err = s.loop.rearm(s)
		if err != nil {
			s.readBroken, s.readDone = true, true
		}
	}
	s.signalLocked()
	s.mu.Unlock()
	if err != nil {
		s.log().Error("watch connection", "err", err)
		s.stop(websocket.CloseInternalServerErr, "relay poller failed")
	}
}

// readBlocking is the reader of a session whose connection is not
// watched: it blocks on the connection until the session ends.
func (s *session) readBlocking() {
	s.readFrames(true)
	s.mu.Lock()
	s.reading = false
	s.signalLocked()
	s.mu.Unlock()
}

// readFrames reads and acts on frames. Without block it returns as soon
// as no data is left in the read buffer (more data may wait in the
// socket; the loop will see it). It reports whether the read side goes
// on; when it does not, the read side has ended, drained if it could be.
// A stopping session still reads and acts on frames until the agent
// answers the close frame or the finisher closes the connection.
func (s *session) readFrames(block bool) (more bool) {
	for s.readNext() {
		if !block && s.br.Buffered() == 0 {
			return true
		}
	}
	s.endReading()
	return false
}

// readNext reads and acts on one frame; it reports whether to go on.
func (s *session) readNext() bool {
	if handled, ok := s.readControl(); handled {
		return ok
	}
	m, ok := s.readFrame(!s.hello)
	if !ok {
		return false
	}
	start := time.Now()
	if !s.hello {
		ok = s.greet(m)
	} else {
		s.hub.seen(s)
		ok = s.handle(m)
	}
	// The agent is not to blame for the time the relay took over its
	// frame (a commit on a slow or busy disk): when that was long, the
	// silence limit counts from now, or the session could be dropped as
	// silent with the agent's next frames waiting in the socket.
	if ok && time.Since(start) > s.deadAfter()/4 {
		s.extend()
	}
	return ok
}

// endReading ends the read side: unless the connection is broken it
// drains it, so the close handshake completes.
func (s *session) endReading() {
	s.stop(websocket.CloseNormalClosure, "")
	s.mu.Lock()
	broken := s.readBroken
	s.mu.Unlock()
	if !broken {
		s.drain()
	}
	s.mu.Lock()
	s.readDone = true
	s.signalLocked()
	s.mu.Unlock()
}

// greet acts on the first frame, which must be hello.
func (s *session) greet(m protocol.Message) bool {
	hello, isHello := m.(*protocol.Hello)
	if !isHello {
		s.fail(protocol.Errorf(protocol.CodeBadState, "first frame must be hello, got %s", m.MsgType()), websocket.ClosePolicyViolation)
		return false
	}
	if err := s.hub.attach(s, hello); err != nil {
		s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
		return false
	}
	s.mu.Lock()
	s.hello = true
	s.mu.Unlock()
	s.extend() // from the hello timeout to the liveness deadline
	s.log().Info("agent connected", "agent", hello.Agent, "board", hello.Board, "running", len(hello.Running))
	s.enqueue(&protocol.Welcome{
		Session:   s.id,
		Device:    s.device,
		Relay:     s.cfg.Version,
		MaxFrame:  s.cfg.MaxFrame,
		PingMs:    s.cfg.PingPeriod.Milliseconds(),
		LastEvent: s.hub.welcomeLastEvent(s),
	})
	s.auth.welcomed()
	// Re-leased requests may have cancels pending.
	s.poke()
	return true
}

// handle acts on one frame after hello; it reports whether to go on.
func (s *session) handle(m protocol.Message) bool {
	switch m := m.(type) {
	case *protocol.Pull:
		s.hub.addCredits(s, m.N)
	case *protocol.Result:
		if s.commitSlots == nil {
			s.commitSlots = make(chan struct{}, maxResultCommits)
		}
		slots := s.commitSlots
		select {
		case slots <- struct{}{}:
		case <-s.quit:
			return false
		}
		rc := s.hub.result(s, m)
		s.commits.Add(1)
		// Acked only once committed; acks may overtake one another.
		// done may run with the deferred work of another caller's
		// commit, which it must not hold up: failing the session, which
		// may block, is left to a worker.
		done := func(err error) {
			if err == nil {
				s.ackLater(m.ID)
			}
			<-slots
			if err == nil || errors.Is(err, ErrClosed) {
				s.commits.Done()
				return
			}
			s.loop.work.run(func() {
				defer s.commits.Done()
				s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
			})
		}
		if rc.behind != nil {
			s.hub.commitAfter(rc.behind, done)
		} else {
			s.loop.work.run(func() { done(rc.wait()) })
		}
	case *protocol.Event:
		// The ack names the last seq stored, which an event the relay
		// ignores lies below: an agent whose numbering fell behind (a
		// journal that lost its last records) goes on above it.
		last, ok, err := s.hub.event(s, m)
		if err != nil {
			s.fail(protocol.Errorf(protocol.CodeInternal, "relay storage failed"), websocket.CloseInternalServerErr)
			return false
		}
		if !ok {
			return true // a replaced session's: not stored, not acked
		}
		return s.enqueue(&protocol.Ack{Events: last})
	case *protocol.Rotated:
		return s.auth.rotated(s)
	case *protocol.Error:
		s.log().Warn("agent reported an error", "code", m.Code, "msg", m.Message)
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
	buf, err := readFrameBuf(r, s.cfg.MaxFrame)
	if err != nil {
		s.readFailed(err, first)
		return nil, false
	}
	s.extend()
	m, err := protocol.Decode(buf.Bytes(), s.cfg.MaxFrame)
	putFrameBuf(buf)
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
	s.mu.Lock()
	s.readBroken = true
	s.mu.Unlock()
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
		s.log().Debug("read ended", "err", err)
	}
}

// writeLoop writes until there is nothing left to write or the session
// stops, then gives up the write side.
func (s *session) writeLoop() {
	for {
		s.mu.Lock()
		if s.closing() {
			if s.out.Holding() {
				s.mu.Unlock()
				s.flush()
				continue
			}
			// The finisher writes what is queued and the close frame.
			s.writing = false
			s.signalLocked()
			s.mu.Unlock()
			return
		}
		switch {
		case len(s.queue) > 0:
			// Control frames go first: welcome before any request.
			b := s.popLocked()
			s.mu.Unlock()
			s.write(websocket.TextMessage, b)
		case s.pongDue:
			b := s.pong
			s.pong, s.pongDue = nil, false
			s.mu.Unlock()
			s.write(websocket.PongMessage, b)
		case s.workDue:
			s.workDue = false
			s.mu.Unlock()
			w, err := s.hub.takeWork(s)
			if err != nil {
				s.stop(websocket.CloseInternalServerErr, "relay storage failed")
				continue
			}
			s.writeWork(w)
		case s.pingDue:
			s.pingDue = false
			s.mu.Unlock()
			s.write(websocket.PingMessage, nil)
		case len(s.acks) > 0 && (s.ackDue || s.out.Holding()):
			// Waiting acks ride with what this run writes, or go on
			// their own once their timer is due.
			m := s.takeAcksLocked()
			s.mu.Unlock()
			s.writeMsg(m)
		case s.out.Holding():
			// Nothing more to write: what was written goes out in one
			// write, and what was queued meanwhile in the next.
			s.mu.Unlock()
			s.flush()
		default:
			// Acks that came in while this run wrote wait for the next
			// frames, or for their timer.
			at, arm := s.armAckLocked()
			s.writing = false
			s.signalLocked()
			s.mu.Unlock()
			if arm {
				s.loop.scheduleBy(s, at)
			}
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
	bp, err := encodeLent(m)
	if err != nil {
		s.log().Error("encode", "type", m.MsgType(), "err", err)
		return true
	}
	ok := s.write(websocket.TextMessage, *bp)
	putSendBuf(bp)
	return ok
}

// flushQueue writes the control frames still queued; only the finisher
// calls it, once no producer can add to the queue.
func (s *session) flushQueue() bool {
	for {
		s.mu.Lock()
		if len(s.acks) == 0 {
			s.mu.Unlock()
			break
		}
		m := s.takeAcksLocked()
		s.mu.Unlock()
		if !s.writeMsg(m) {
			return false
		}
	}
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			return true
		}
		b := s.popLocked()
		s.mu.Unlock()
		if !s.write(websocket.TextMessage, b) {
			return false
		}
	}
}

// write writes a frame. The frames written by one writer run are held
// and go out together, in one write syscall instead of one each, when
// the writer has nothing more to write (or has held batchconn.MaxHeld bytes).
// Whoever owns the write side flushes before giving it up.
func (s *session) write(typ int, b []byte) bool {
	s.out.Hold() // no deadline until the flush
	if err := s.conn.WriteMessage(typ, b); err != nil {
		s.out.Flush(s.writeBy()) // what was held before still goes out, if it can
		s.writeFailed(err)
		return false
	}
	if s.out.Held() >= batchconn.MaxHeld {
		return s.flush()
	}
	return true
}

// flush sends the frames held since the first write of the batch.
func (s *session) flush() bool {
	if err := s.out.Flush(s.writeBy()); err != nil {
		s.writeFailed(err)
		return false
	}
	return true
}

func (s *session) writeFailed(err error) {
	s.log().Debug("write failed", "err", err)
	s.stop(websocket.CloseAbnormalClosure, "write failed")
}

// writeClose sends the close frame, after the frames held, and reports
// whether it went out.
func (s *session) writeClose() bool {
	if s.closeCode == websocket.CloseAbnormalClosure {
		s.out.Flush(s.writeBy()) // only stops holding: the connection is broken
		return false
	}
	s.out.Hold() // no deadline until the flush
	err := s.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(s.closeCode, s.closeText))
	return s.out.Flush(s.writeBy()) == nil && err == nil
}

// writeBy is the deadline of a write starting now.
func (s *session) writeBy() time.Time { return time.Now().Add(s.cfg.WriteTimeout) }
