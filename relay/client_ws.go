package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/internal/batchconn"
	"github.com/tetherhq/tether/protocol"
)

// Error codes of the client WebSocket beyond those of package protocol.
const (
	codeForbidden = "forbidden"
	codeTooMany   = "too_many"
)

// Limits of one /v1/client connection.
const (
	// maxClientWatches bounds the requests one connection waits on at
	// once; a call beyond it is refused before it is submitted.
	maxClientWatches = 1024
	// maxClientSubs bounds the devices one connection follows.
	maxClientSubs = 256
	// maxBadFrames is how many invalid frames in a row a client may send
	// before it is disconnected with 1008: a bug in a page should get
	// error frames to debug with, a flood should not get a relay's time.
	maxBadFrames = 16
	// eventBatch is how many events a subscription reads per store call.
	eventBatch = 100
	// closeSlowClient ends a connection whose send queue stayed full: the
	// client should reconnect and re-attach with get, nothing is lost.
	closeSlowClient = websocket.CloseTryAgainLater
)

// handleClient serves GET /v1/client, the device-A WebSocket (see
// protocol/CLIENT.md). Origin, then credentials are checked before the
// upgrade, so refusals are plain HTTP with a JSON body: 403 for a foreign
// origin, 401 for a missing, wrong, used or expired credential.
func (s *Server) handleClient(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		s.log.Warn("client websocket refused: origin not allowed", "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		writeError(w, http.StatusForbidden, codeForbidden, "origin not allowed")
		return
	}
	id, ok := s.authenticateUpgrade(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
		writeError(w, http.StatusUnauthorized, codeUnauthorized, "missing or invalid client key or ticket")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		noteRefusal(r, refusedNotWebSocket)
		writeError(w, http.StatusBadRequest, codeBadRequest, "WebSocket upgrade required")
		return
	}
	if !s.sessions.add() {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "relay is shutting down")
		return
	}
	defer s.sessions.done()
	// The connection is counted from here, so concurrent upgrades cannot
	// pass the bound together.
	s.clientsMu.Lock()
	if s.clientConns[id.name] >= s.cfg.ClientConns {
		s.clientsMu.Unlock()
		noteRefusal(r, refusedClientConns)
		s.log.Warn("client websocket refused: too many connections", "client", id.name, "limit", s.cfg.ClientConns)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusTooManyRequests, codeTooMany,
			fmt.Sprintf("client %s has %d connections open, the most allowed (tether-relay serve --client-conns)", id.name, s.cfg.ClientConns))
		return
	}
	if s.clientConns == nil {
		s.clientConns = make(map[string]int)
	}
	s.clientConns[id.name]++
	s.clientsMu.Unlock()
	defer func() {
		s.clientsMu.Lock()
		if s.clientConns[id.name]--; s.clientConns[id.name] == 0 {
			delete(s.clientConns, id.name)
		}
		s.clientsMu.Unlock()
	}()

	up := websocket.Upgrader{
		HandshakeTimeout: s.cfg.WriteTimeout,
		CheckOrigin:      s.originAllowed, // checked above; kept as a second lock
		Error:            upgradeError,
	}
	conn, err := up.Upgrade(&batchResponse{ResponseWriter: w}, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := newClientConn(s, conn, id)
	c.log.Info("client connected", "remote", r.RemoteAddr)
	s.clientsMu.Lock()
	if s.clients == nil {
		s.clients = make(map[*clientConn]clientID)
	}
	s.clients[c] = id
	s.clientsMu.Unlock()
	defer func() {
		s.clientsMu.Lock()
		delete(s.clients, c)
		s.clientsMu.Unlock()
	}()
	c.run()
}

// authenticateUpgrade accepts a client key in Authorization (services) or
// a ticket in ?ticket= (browsers). A request that presents a key is judged
// by the key alone.
func (s *Server) authenticateUpgrade(r *http.Request) (clientID, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		return s.creds.client(bearer(h))
	}
	if t := r.URL.Query().Get("ticket"); t != "" {
		id, ok := s.tickets.redeem(t, time.Now())
		// A ticket outlives nothing: not the key that bought it.
		return id, ok && s.creds.hasClient(id)
	}
	return clientID{}, false
}

// clientConn is one /v1/client connection. The HTTP handler's goroutine
// is its reader; run starts the writer, and the reader starts one waiter
// per followed request and one follower per subscribed device. run
// returns after all of them have stopped.
type clientConn struct {
	srv  *Server
	svc  ClientService
	cfg  *Config
	conn *websocket.Conn
	out  *batchconn.Conn // what conn writes to: the writer batches its frames
	log  *slog.Logger

	// ctx ends the waiters and followers when the reader is done.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // waiters and followers

	send       chan *[]byte  // encoded frames for the writer, in lent buffers (encodeQueued)
	quit       chan struct{} // closed by stop
	readerDone chan struct{} // closed when the reader returns

	stopOnce  sync.Once
	closeCode int    // written before quit is closed
	closeText string // written before quit is closed

	readBroken bool // owned by the reader
	badFrames  int  // owned by the reader: invalid frames in a row

	mu sync.Mutex
	// Guarded by mu:
	watches map[string]string        // request id → ref to answer with
	storing int                      // calls queued, their commits under way
	subs    map[string]*subscription // device → its follower
	ending  map[string]chan struct{} // device → its unsubscribed follower's done
}

// subscription is one device follower; stop ends it.
type subscription struct {
	stop context.CancelFunc
	// repeat asks the follower to push the device's presence again, the
	// answer to a repeated subscribe: the follower sends it, so that it
	// comes after the subscription's first presence and in order with
	// the changes. Repeats asked while one is pending share its answer.
	repeat chan struct{}
	// done is closed when the follower has returned: a new subscription
	// to the device starts only then, so that the two never interleave
	// their events.
	done chan struct{}
}

func newClientConn(s *Server, conn *websocket.Conn, id clientID) *clientConn {
	// The client's name and key ride in ctx so that Submit and Authorize
	// apply its scope and rate limit to everything this connection does,
	// and refuse it all once the key is revoked.
	ctx, cancel := context.WithCancel(withClientID(context.Background(), id))
	return &clientConn{
		srv:        s,
		svc:        s,
		cfg:        &s.cfg,
		conn:       conn,
		out:        conn.NetConn().(*batchconn.Conn),
		log:        s.log.With("client", id.name, "conn", newID("c")),
		ctx:        ctx,
		cancel:     cancel,
		send:       make(chan *[]byte, s.cfg.ClientSendQueue),
		quit:       make(chan struct{}),
		readerDone: make(chan struct{}),
		watches:    make(map[string]string),
		subs:       make(map[string]*subscription),
		ending:     make(map[string]chan struct{}),
	}
}

// run serves the connection until it ends.
func (c *clientConn) run() {
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		c.writeLoop()
	}()
	c.readLoop()
	if !c.readBroken {
		c.drain()
	}
	close(c.readerDone)
	c.stop(websocket.CloseNormalClosure, "")
	c.cancel()
	c.wg.Wait()
	writer.Wait()
	c.log.Info("client disconnected", "reason", c.closeText)
}

// stop asks the connection to end with a close frame carrying code and
// text. It never blocks; the first call wins.
func (c *clientConn) stop(code int, text string) {
	c.stopOnce.Do(func() {
		if len(text) > maxCloseReason {
			text = text[:maxCloseReason]
		}
		c.closeCode, c.closeText = code, text
		close(c.quit)
	})
}

// push hands m to the writer. A full queue is waited on for at most
// WriteTimeout; a client that reads slower than that is disconnected,
// so one slow browser tab never holds up anything but its own goroutines.
func (c *clientConn) push(m protocol.Message) bool {
	bp, err := encodeQueued(m)
	if err != nil {
		c.log.Error("encode", "type", m.MsgType(), "err", err)
		return false
	}
	select {
	case c.send <- bp:
		return true
	case <-c.quit:
		putQueueBuf(bp)
		return false
	default:
	}
	t := time.NewTimer(c.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case c.send <- bp:
		return true
	case <-c.quit:
	case <-t.C:
		c.log.Warn("client too slow: send queue full", "queue", cap(c.send))
		c.stop(closeSlowClient, "too slow: send queue full")
	}
	putQueueBuf(bp)
	return false
}

// pushErr answers a frame that could not be acted on; the connection stays.
func (c *clientConn) pushErr(ref, id string, err error) {
	f := c.failure(err)
	c.push(&protocol.ClientError{Ref: ref, ID: id, Code: f.Code, Message: f.Message})
}

// failure maps a service error to the code and message a client sees.
func (c *clientConn) failure(err error) *protocol.Failure {
	var (
		f  *protocol.Failure
		ue *UnstoredError
	)
	switch {
	case errors.As(err, &ue):
		c.log.Error("client request failed", "err", err)
		return protocol.Errorf(protocol.CodeInternal, "%s", unstoredMessage)
	case errors.As(err, &f):
		return f
	case errors.Is(err, ErrUnknownDevice):
		return protocol.Errorf(protocol.CodeNotFound, "unknown device")
	case errors.Is(err, ErrNotFound):
		return protocol.Errorf(protocol.CodeNotFound, "unknown request")
	case errors.Is(err, ErrQueueFull):
		return protocol.Errorf(protocol.CodeQueueFull, "device queue is full")
	case errors.Is(err, ErrClosed):
		return protocol.Errorf(codeUnavailable, "relay is shutting down")
	case errors.Is(err, ErrForbidden):
		return protocol.Errorf(codeForbidden, "%v", err)
	case errors.Is(err, ErrRateLimited):
		return protocol.Errorf(codeRateLimited, "%v", err)
	}
	c.log.Error("client request failed", "err", err)
	return protocol.Errorf(protocol.CodeInternal, "internal error")
}

func (c *clientConn) deadAfter() time.Duration { return protocol.DeadAfter(c.cfg.PingPeriod) }

func (c *clientConn) readLoop() {
	conn := c.conn
	conn.SetReadLimit(int64(c.cfg.ClientMaxFrame) * readLimitSlack)
	conn.SetPongHandler(func(string) error {
		return conn.SetReadDeadline(time.Now().Add(c.deadAfter()))
	})
	conn.SetReadDeadline(time.Now().Add(c.deadAfter()))
	for {
		typ, r, err := conn.NextReader()
		if err != nil {
			c.readFailed(err)
			return
		}
		if typ != websocket.TextMessage {
			c.fail(protocol.Errorf(protocol.CodeBadFrame, "binary frames are not supported; send JSON text"), websocket.CloseUnsupportedData)
			return
		}
		buf, err := readFrameBuf(r, c.cfg.ClientMaxFrame)
		if err != nil {
			c.readFailed(err)
			return
		}
		conn.SetReadDeadline(time.Now().Add(c.deadAfter()))
		m, err := protocol.DecodeClient(buf.Bytes(), c.cfg.ClientMaxFrame)
		if err != nil {
			stop := c.refuse(buf.Bytes(), err)
			putFrameBuf(buf)
			if stop {
				return
			}
			continue
		}
		putFrameBuf(buf)
		c.badFrames = 0
		c.handle(m)
	}
}

// refuse answers a frame that did not decode with an error frame, and
// reports whether the connection must end instead: a frame too large, or
// too many bad ones in a row.
func (c *clientConn) refuse(frame []byte, err error) (stop bool) {
	f := c.failure(err)
	if f.Code == protocol.CodeTooLarge {
		c.fail(f, websocket.CloseMessageTooBig)
		return true
	}
	if c.badFrames++; c.badFrames > maxBadFrames {
		c.fail(protocol.Errorf(protocol.CodeBadFrame, "too many invalid frames"), websocket.ClosePolicyViolation)
		return true
	}
	c.push(&protocol.ClientError{Ref: refOf(frame), Code: f.Code, Message: f.Message})
	return false
}

// refOf digs the ref out of a frame that failed validation, so that the
// error frame can still be matched to what the client sent.
func refOf(b []byte) string {
	var v struct {
		Ref any `json:"ref"`
	}
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	if s, ok := v.Ref.(string); ok && protocol.ValidID(s) {
		return s
	}
	return ""
}

// fail reports an error and closes the connection with code.
func (c *clientConn) fail(f *protocol.Failure, code int) {
	c.log.Warn("client protocol violation", "code", f.Code, "msg", f.Message)
	c.push(&protocol.ClientError{Code: f.Code, Message: f.Message})
	c.stop(code, f.Code)
}

func (c *clientConn) readFailed(err error) {
	c.readBroken = true
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		c.stop(websocket.CloseMessageTooBig, "frame too large")
	case errors.As(err, &ne) && ne.Timeout():
		c.stop(websocket.CloseGoingAway, "no traffic")
	default:
		c.stop(websocket.CloseNormalClosure, "")
	}
}

// drain reads until the client answers the close frame or the grace
// period ends, so a final error frame is not lost to a TCP reset.
func (c *clientConn) drain() {
	c.conn.SetReadDeadline(time.Now().Add(c.closeGrace()))
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}

func (c *clientConn) closeGrace() time.Duration { return min(c.cfg.WriteTimeout, time.Second) }

// handle acts on one valid frame. Nothing a client sends here ends the
// connection: every failure is answered with an error frame.
func (c *clientConn) handle(m protocol.Message) {
	switch m := m.(type) {
	case *protocol.ClientCall:
		if c.watching() >= maxClientWatches {
			c.push(&protocol.ClientError{Ref: m.Ref, Code: codeTooMany,
				Message: "too many requests followed on this connection; wait for results first"})
			return
		}
		// Calls are queued in the order they came, so a web app that sends
		// gpio.write high, then low, gets them run in that order; their
		// commits overlap (and group-commit) instead of taking turns.
		q, err := c.srv.enqueue(c.ctx, m.Device, m.Submit())
		if err != nil {
			c.pushErr(m.Ref, "", err)
			return
		}
		c.mu.Lock()
		c.storing++
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			rec, err := q.commit()
			if err != nil {
				c.mu.Lock()
				c.storing--
				c.mu.Unlock()
				var ue *UnstoredError
				if errors.As(err, &ue) {
					c.pushErr(m.Ref, ue.Request.ID, err)
				} else {
					c.pushErr(m.Ref, "", err)
				}
				return
			}
			// The call's slot, counted in storing, becomes its watch.
			if c.watchOf(m.Ref, rec, true) {
				c.wait(rec.ID)
			}
		}()
	case *protocol.ClientGet:
		if err := c.srv.authorizeRequest(c.ctx, m.ID); err != nil {
			c.pushErr(m.Ref, m.ID, err)
			return
		}
		rec, err := c.svc.Request(m.ID)
		if err != nil {
			c.pushErr(m.Ref, m.ID, err)
			return
		}
		c.follow(m.Ref, rec)
	case *protocol.ClientCancel:
		if err := c.srv.authorizeRequest(c.ctx, m.ID); err != nil {
			c.pushErr(m.Ref, m.ID, err)
			return
		}
		rec, err := c.svc.Cancel(m.ID)
		if err != nil && !errors.Is(err, ErrTerminal) {
			c.pushErr(m.Ref, m.ID, err)
			return
		}
		// Already finished: the result tells the client how it ended.
		c.follow(m.Ref, rec)
	case *protocol.ClientSubscribe:
		c.subscribe(m)
	case *protocol.ClientUnsubscribe:
		c.mu.Lock()
		if sub := c.subs[m.Device]; sub != nil {
			sub.stop()
			delete(c.subs, m.Device)
			c.ending[m.Device] = sub.done
		}
		c.mu.Unlock()
	}
}

func (c *clientConn) watching() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.watches) + c.storing
}

// follow answers with rec: a result if it has ended, otherwise accepted
// and, once it ends, a result pushed by a waiter. A request already
// followed keeps its one waiter; the newest ref is used for its result.
func (c *clientConn) follow(ref string, rec protocol.Record) {
	if !c.watchOf(ref, rec, false) {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.wait(rec.ID)
	}()
}

// watchOf is follow but for the waiter: it reports whether the caller
// must become rec's waiter (call wait), which a goroutine of the
// connection's own, done with the request otherwise, can do without
// starting another. stored is true for a call, whose slot was reserved
// (in storing) before it was submitted: its request exists, so it is
// followed whatever the count. A get or cancel counts those reserved
// slots too, and is refused at the limit before any accepted goes out: an
// accepted is always followed by a result.
func (c *clientConn) watchOf(ref string, rec protocol.Record, stored bool) bool {
	release := func() {
		if stored {
			c.mu.Lock()
			c.storing--
			c.mu.Unlock()
		}
	}
	if protocol.Terminal(rec.State) {
		release()
		c.push(protocol.NewClientResult(ref, rec))
		return false
	}
	c.mu.Lock()
	_, followed := c.watches[rec.ID]
	full := !stored && !followed && len(c.watches)+c.storing >= maxClientWatches
	c.mu.Unlock()
	if full {
		c.push(&protocol.ClientError{Ref: ref, ID: rec.ID, Code: codeTooMany, Message: "too many requests followed on this connection"})
		return false
	}
	if !c.push(&protocol.ClientAccepted{Ref: ref, ID: rec.ID, Request: rec}) {
		release()
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if stored {
		c.storing--
	}
	if _, ok := c.watches[rec.ID]; ok {
		c.watches[rec.ID] = ref
		return false
	}
	// A get or cancel that ran alongside another may take the count a
	// little past the limit; each is followed to its result.
	c.watches[rec.ID] = ref
	return true
}

// wait is the waiter of one request: it pushes its result when it ends.
func (c *clientConn) wait(id string) {
	rec, err := c.svc.WaitRequest(c.ctx, id)
	c.mu.Lock()
	ref := c.watches[id]
	delete(c.watches, id)
	c.mu.Unlock()
	switch {
	case c.ctx.Err() != nil:
		return
	case err != nil:
		c.pushErr(ref, id, err)
	case protocol.Terminal(rec.State):
		c.push(protocol.NewClientResult(ref, rec))
	}
	// Otherwise the relay is stopping; the connection closes with 1001
	// and the client re-attaches with get after reconnecting.
}

// subscribe starts a follower for m.Device, or, when one runs, repeats
// the device's presence as confirmation.
func (c *clientConn) subscribe(m *protocol.ClientSubscribe) {
	if err := c.srv.Authorize(c.ctx, m.Device, ""); err != nil {
		c.pushErr(m.Ref, "", err)
		return
	}
	if _, err := c.svc.Device(m.Device); err != nil {
		c.pushErr(m.Ref, "", err)
		return
	}
	c.mu.Lock()
	running, full := c.subs[m.Device], len(c.subs) >= maxClientSubs
	if running != nil || full {
		c.mu.Unlock()
		if running != nil {
			select {
			case running.repeat <- struct{}{}:
			default:
			}
		} else {
			c.push(&protocol.ClientError{Ref: m.Ref, Code: codeTooMany, Message: "too many subscriptions on this connection"})
		}
		return
	}
	// Without after, only events stored from now on are sent.
	var after uint64
	if m.After != nil {
		after = *m.After
	} else {
		after = c.srv.hub.lastEventSeq(m.Device)
	}
	ctx, stop := context.WithCancel(c.ctx)
	sub := &subscription{stop: stop, repeat: make(chan struct{}, 1), done: make(chan struct{})}
	c.subs[m.Device] = sub
	previous := c.ending[m.Device]
	delete(c.ending, m.Device)
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer close(sub.done)
		defer stop()
		if previous != nil {
			<-previous // the last follower of this device, unsubscribed
		}
		if ctx.Err() != nil {
			return // unsubscribed too, before it started: not a frame
		}
		if err := c.stream(ctx, m.Device, after, sub.repeat); err != nil && ctx.Err() == nil {
			c.pushErr(m.Ref, "", err)
		}
		c.mu.Lock()
		if c.subs[m.Device] == sub {
			delete(c.subs, m.Device)
		}
		if c.ending[m.Device] == sub.done {
			delete(c.ending, m.Device)
		}
		c.mu.Unlock()
	}()
}

func presenceOf(info protocol.DeviceInfo) *protocol.ClientPresence {
	return &protocol.ClientPresence{Device: info.ID, Online: info.Online, LastSeen: info.LastSeen}
}

// stream is a device follower: it pushes the device's presence now,
// whenever it changes and when repeat asks, and every event after seq
// after, waking on the hub's change signal rather than polling.
func (c *clientConn) stream(ctx context.Context, dev string, after uint64, repeat <-chan struct{}) error {
	first, online, repeated := true, false, false
	for {
		// Take the channel before reading, so a change in between still
		// wakes us.
		changed, err := c.svc.DeviceChanged(dev)
		if err != nil {
			return err
		}
		info, err := c.svc.Device(dev)
		if err != nil {
			return err
		}
		if first || repeated || info.Online != online {
			p := presenceOf(info)
			if first {
				from := after
				p.Seq = &from
			}
			first, online, repeated = false, info.Online, false
			if !c.push(p) {
				return nil
			}
		}
		for {
			evs, err := c.svc.Events(dev, after, eventBatch)
			if err != nil {
				return err
			}
			for _, e := range evs {
				if ctx.Err() != nil {
					return nil // unsubscribed: the replay stops here
				}
				if !c.push(&protocol.ClientEvent{Device: dev, Seq: e.Seq, Name: e.Name, Data: e.Data, Time: e.Time}) {
					return nil
				}
				after = e.Seq
			}
			if len(evs) < eventBatch {
				break
			}
		}
		select {
		case <-changed:
		case <-repeat:
			repeated = true
		case <-ctx.Done():
			return nil
		case <-c.svc.Done():
			return nil
		}
	}
}

// writeLoop is the only code that writes to the connection.
func (c *clientConn) writeLoop() {
	ping := time.NewTicker(c.cfg.PingPeriod)
	defer ping.Stop()
	defer c.conn.Close() // unblocks the reader

	for {
		select {
		case bp := <-c.send:
			if !c.writeQueued(bp) {
				return
			}
		case <-ping.C:
			if !c.write(websocket.PingMessage, nil) || !c.flush() {
				return
			}
		case <-c.svc.Done():
			c.stop(websocket.CloseGoingAway, "relay shutting down")
			c.finish()
			return
		case <-c.quit:
			c.finish()
			return
		}
	}
}

// writeQueued writes b and the frames queued behind it in one write
// syscall (or one per batchconn.MaxHeld bytes) instead of one each.
// Before it sends what it holds, it yields once to the goroutines ready to
// run: under load those are waiters with results for this connection, and
// their frames then join the batch (in tput_100agents_ws, see
// BENCHMARKS.md, the relay made 2.4 write syscalls a request without the
// yield and 1.6 with it). With nothing else to run, it returns at once.
func (c *clientConn) writeQueued(bp *[]byte) bool {
	yielded := false
	for {
		if !c.writeLent(bp) {
			return false
		}
		if c.out.Held() >= batchconn.MaxHeld {
			return c.flush()
		}
		select {
		case bp = <-c.send:
			continue
		default:
		}
		if yielded {
			return c.flush()
		}
		yielded = true
		runtime.Gosched()
		select {
		case bp = <-c.send:
		default:
			return c.flush()
		}
	}
}

// writeLent writes a queued frame and gives its buffer back.
func (c *clientConn) writeLent(bp *[]byte) bool {
	ok := c.write(websocket.TextMessage, *bp)
	putQueueBuf(bp)
	return ok
}

// finish flushes what is queued and closes politely.
func (c *clientConn) finish() {
flush:
	for {
		select {
		case bp := <-c.send:
			if !c.writeLent(bp) {
				return
			}
		default:
			break flush
		}
	}
	if c.closeCode == websocket.CloseAbnormalClosure {
		c.out.Flush(c.writeBy()) // only stops holding: the connection is broken
		return
	}
	c.out.Hold() // no deadline until the flush
	err := c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(c.closeCode, c.closeText))
	if c.out.Flush(c.writeBy()) != nil || err != nil {
		return
	}
	grace := time.NewTimer(c.closeGrace())
	defer grace.Stop()
	select {
	case <-c.readerDone:
	case <-grace.C:
	}
}

// write writes a frame, held until the next flush (see batchconn.Conn).
func (c *clientConn) write(typ int, b []byte) bool {
	c.out.Hold() // no deadline until the flush
	if err := c.conn.WriteMessage(typ, b); err != nil {
		c.out.Flush(c.writeBy()) // what was held before still goes out, if it can
		c.writeFailed(err)
		return false
	}
	return true
}

// flush sends the frames held since the first write of the batch.
func (c *clientConn) flush() bool {
	if err := c.out.Flush(c.writeBy()); err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

func (c *clientConn) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The client stopped reading: its socket took nothing for
		// WriteTimeout, so a close frame could not reach it either.
		c.log.Warn("client too slow: a write stalled", "timeout", c.cfg.WriteTimeout)
		c.stop(websocket.CloseAbnormalClosure, "too slow: write stalled")
		return
	}
	c.log.Debug("client write failed", "err", err)
	c.stop(websocket.CloseAbnormalClosure, "write failed")
}

// writeBy is the deadline of a write starting now.
func (c *clientConn) writeBy() time.Time { return time.Now().Add(c.cfg.WriteTimeout) }
