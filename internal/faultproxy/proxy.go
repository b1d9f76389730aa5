// Package faultproxy is a TCP proxy that injects network faults between two
// programs, for chaos and liveness tests.
//
// A Proxy listens on a loopback port and forwards every accepted connection
// to a fixed target. Each forwarded connection is a Link, and faults are
// applied to links while they run:
//
//   - Reset closes both sockets with SO_LINGER 0, so both ends get a TCP RST.
//   - BlackHole stops forwarding in both directions but keeps both sockets
//     open: each end sees a peer that has gone silent without a FIN, the
//     half-open link a dead NAT or a pulled cable leaves behind. Bytes still
//     arriving are read and dropped, and a close by one end is not passed on
//     to the other; the link goes away once both ends have closed.
//   - Toxics change how bytes are delivered: Latency delays every chunk,
//     SlowChunk/SlowPause write in small pieces with pauses, and Partial
//     splits every chunk at random points into separate writes.
//
// Faults can hit one link (Link methods) or every current link (Proxy
// methods); toxics set on the Proxy also apply to links accepted later, and
// Refuse turns new connections away.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Toxics shape how a link delivers bytes. The zero value forwards
// unchanged.
type Toxics struct {
	// Latency delays every chunk by this much (plus up to Jitter) before it
	// is written on. Chunks keep their order.
	Latency time.Duration
	Jitter  time.Duration
	// SlowChunk, when > 0, writes each chunk in pieces of at most this many
	// bytes, sleeping SlowPause between pieces.
	SlowChunk int
	SlowPause time.Duration
	// Partial splits each chunk at 1–3 random points and writes the pieces
	// separately, a short pause apart, so the receiver sees partial frames.
	Partial bool
}

func (t Toxics) zero() bool { return t == Toxics{} }

// Proxy forwards TCP connections from its listener to a target address.
type Proxy struct {
	ln     net.Listener
	target func() string
	wg     sync.WaitGroup // accept loop and every link's goroutines

	mu sync.Mutex
	// Guarded by mu:
	links  map[*Link]struct{}
	toxics Toxics
	refuse bool
	closed bool
	rng    *rand.Rand
}

// Listen starts a proxy on addr ("127.0.0.1:0" for any free port) that
// forwards to target. Call Close to stop it.
func Listen(addr, target string, seed uint64) (*Proxy, error) {
	return ListenFunc(addr, func() string { return target }, seed)
}

// ListenFunc is Listen to a target that may move: each new connection
// goes to the address target returns then (a server restarted on another
// port, say).
func ListenFunc(addr string, target func() string, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		ln:     ln,
		target: target,
		links:  make(map[*Link]struct{}),
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.accept()
	}()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			resetConn(c)
			continue
		}
		up, err := net.DialTimeout("tcp", p.target(), 5*time.Second)
		if err != nil {
			// The target is down: the client sees its connection refused
			// the only way a proxy can say it, a reset.
			resetConn(c)
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			resetConn(c)
			resetConn(up)
			continue
		}
		l := newLink(c, up, p.toxics, p.rng.Uint64())
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			l.run()
			p.mu.Lock()
			delete(p.links, l)
			p.mu.Unlock()
		}()
	}
}

// Links returns the links open now.
func (p *Proxy) Links() []*Link {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Collect(maps.Keys(p.links))
}

// Reset resets every open link and returns how many there were.
func (p *Proxy) Reset() int {
	ls := p.Links()
	for _, l := range ls {
		l.Reset()
	}
	return len(ls)
}

// BlackHole black-holes every open link that is not already and returns
// how many it hit. Links accepted afterwards forward normally.
func (p *Proxy) BlackHole() int {
	n := 0
	for _, l := range p.Links() {
		if l.BlackHole() {
			n++
		}
	}
	return n
}

// MuteReplies mutes the replies of every open link (Link.MuteReplies) and
// returns how many there were. Links accepted afterwards forward normally.
func (p *Proxy) MuteReplies() int {
	ls := p.Links()
	for _, l := range ls {
		l.MuteReplies()
	}
	return len(ls)
}

// Refuse makes the proxy reset new connections at once (on) or forward
// them again (off). Open links are not affected: together with BlackHole it
// keeps a peer from reconnecting while the old link is half-open.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = on
}

// SetToxics applies t to every open link and to links accepted later.
func (p *Proxy) SetToxics(t Toxics) {
	p.mu.Lock()
	p.toxics = t
	ls := make([]*Link, 0, len(p.links))
	for l := range p.links {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	for _, l := range ls {
		l.SetToxics(t)
	}
}

// Close stops accepting, resets every link and waits for all goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Reset()
	p.wg.Wait()
	return err
}

// Link is one forwarded connection: client ↔ proxy ↔ target.
type Link struct {
	client, server net.Conn
	toxics         atomic.Pointer[Toxics]
	holed          chan struct{} // closed by BlackHole
	holeOnce       sync.Once
	muted          atomic.Bool // MuteReplies was called
	resetOnce      sync.Once
	done           chan struct{} // closed by Reset or when the link ends

	rngMu sync.Mutex
	rng   *rand.Rand
}

func newLink(client, server net.Conn, t Toxics, seed uint64) *Link {
	for _, c := range []net.Conn{client, server} {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
	}
	l := &Link{
		client: client,
		server: server,
		holed:  make(chan struct{}),
		done:   make(chan struct{}),
		rng:    rand.New(rand.NewPCG(seed, 1)),
	}
	l.toxics.Store(&t)
	return l
}

// ClientAddr is the address of the end that dialled the proxy.
func (l *Link) ClientAddr() net.Addr { return l.client.RemoteAddr() }

// Reset closes both sockets with a TCP RST. Safe to call more than once.
func (l *Link) Reset() {
	l.resetOnce.Do(func() {
		// Both sockets get linger 0 before anything closes either, so
		// whichever close comes first (ours, or a pipe goroutine's on
		// seeing the other end fail) sends RST, never FIN.
		lingerZero(l.client)
		lingerZero(l.server)
		close(l.done)
		l.client.Close()
		l.server.Close()
	})
}

// BlackHole stops forwarding in both directions and hides closes, leaving
// both ends with a half-open connection. It reports whether the link was
// forwarding before.
func (l *Link) BlackHole() bool {
	hit := false
	l.holeOnce.Do(func() {
		hit = true
		close(l.holed)
	})
	return hit
}

// MuteReplies drops, from now on, what the target sends, while what the
// client sends still reaches it: a client whose request arrives but whose
// answer is lost on the way back.
func (l *Link) MuteReplies() { l.muted.Store(true) }

// BlackHoled reports whether BlackHole was called.
func (l *Link) BlackHoled() bool {
	select {
	case <-l.holed:
		return true
	default:
		return false
	}
}

// SetToxics changes how the link delivers bytes from now on.
func (l *Link) SetToxics(t Toxics) { l.toxics.Store(&t) }

func (l *Link) intn(n int) int {
	l.rngMu.Lock()
	defer l.rngMu.Unlock()
	return l.rng.IntN(n)
}

// run forwards both directions until the link ends.
func (l *Link) run() {
	var wg sync.WaitGroup
	wg.Add(2)
	up, down := make(chan error, 1), make(chan error, 1)
	go func() {
		defer wg.Done()
		up <- l.pipe(l.server, l.client)
	}()
	go func() {
		defer wg.Done()
		down <- l.pipe(l.client, l.server)
	}()
	// While forwarding, the first direction to end ends the link: a close
	// or reset by one end reaches the other. Once black-holed, each
	// direction drains on its own and the link ends when both have.
	var first error
	select {
	case first = <-up:
	case first = <-down:
	}
	if !l.BlackHoled() {
		if isReset(first) {
			l.Reset()
		} else {
			l.client.Close()
			l.server.Close()
		}
	}
	wg.Wait()
	l.client.Close()
	l.server.Close()
	l.resetOnce.Do(func() { close(l.done) })
}

// chunk is a piece of the stream on its way through a direction.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst applying the toxics. It returns the error that
// ended reading from src (io.EOF for a clean close).
func (l *Link) pipe(dst, src net.Conn) error {
	q := make(chan chunk, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.deliver(dst, q)
	}()
	defer wg.Wait()
	defer close(q)
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 && !l.BlackHoled() && !(src == l.server && l.muted.Load()) {
			t := l.toxics.Load()
			c := chunk{b: buf[:n]}
			if t.Latency > 0 || t.Jitter > 0 {
				d := t.Latency
				if t.Jitter > 0 {
					d += time.Duration(l.intn(int(t.Jitter)))
				}
				c.due = time.Now().Add(d)
			}
			select {
			case q <- c:
			case <-l.done:
				return net.ErrClosed
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return err
		}
	}
}

// deliver writes queued chunks to dst, applying delay, slow and partial
// writes. A failed write resets the link: the other end must not keep
// talking into a connection that lost data.
func (l *Link) deliver(dst net.Conn, q <-chan chunk) {
	for c := range q {
		if !c.due.IsZero() {
			if !l.sleep(time.Until(c.due)) {
				return
			}
		}
		if l.BlackHoled() {
			continue
		}
		if err := l.write(dst, c.b); err != nil {
			if !l.BlackHoled() {
				l.Reset()
			}
			return
		}
	}
}

func (l *Link) write(dst net.Conn, b []byte) error {
	t := l.toxics.Load()
	var pieces [][]byte
	switch {
	case t.SlowChunk > 0:
		for len(b) > 0 {
			n := min(t.SlowChunk, len(b))
			pieces = append(pieces, b[:n])
			b = b[n:]
		}
	case t.Partial && len(b) > 1:
		cuts := 1 + l.intn(3)
		for i := 0; i < cuts && len(b) > 1; i++ {
			n := 1 + l.intn(len(b)-1)
			pieces = append(pieces, b[:n])
			b = b[n:]
		}
		pieces = append(pieces, b)
	default:
		pieces = [][]byte{b}
	}
	pause := t.SlowPause
	if t.SlowChunk <= 0 && t.Partial {
		pause = time.Millisecond
	}
	for i, p := range pieces {
		if i > 0 && pause > 0 {
			if !l.sleep(pause) {
				return net.ErrClosed
			}
		}
		if l.BlackHoled() {
			return nil
		}
		if _, err := dst.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// sleep waits d unless the link is reset first.
func (l *Link) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	}
}

func resetConn(c net.Conn) {
	lingerZero(c)
	c.Close()
}

func lingerZero(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF)
}
