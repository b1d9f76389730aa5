package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// The swarm is a process of lightweight agents for the capacity and
// reconnect-storm benchmarks: each is one goroutine holding a raw gorilla
// connection that sends hello, reads welcome and then idles, answering the
// relay's pings. They reconnect like the real agent: full-jitter
// exponential backoff from 500 ms to 30 s, reset after 30 s of health,
// at least Retry-After after a 503/429, and at the moment a restarting
// relay's close frame names. Connections are spread over
// 127.0.0.2–127.0.0.251 so 50,000 of them do not run out of ephemeral
// ports.
//
// With --proto nats the same swarm holds idle NATS client connections
// (CONNECT, then PONG to every PING): the peer baseline for memory per
// connection and connects per second.
//
// The swarm is driven over stdin/stdout, one line each way:
//
//	(start)  → "up N MS ATTEMPTS"  once all N are connected, MS after start
//	"mark"   → "marked"            start counting reconnects and attempts
//	"count"  → "count CONNECTED BACK"
//	"report" → "report BACK T99_MS T100_MS ATTEMPTS"  since mark; -1 = not reached
//
// It exits when stdin closes.

const (
	swarmBackoffInitial = 500 * time.Millisecond
	swarmBackoffMax     = 30 * time.Second
	swarmHealthy        = 30 * time.Second
	swarmSources        = 250
)

type swarm struct {
	url     string
	proto   string
	hdrs    []http.Header
	dialers []*net.Dialer
	ws      []*websocket.Dialer
	sem     chan struct{} // bounds dials in flight

	connected atomic.Int64
	attempts  atomic.Int64

	mu sync.Mutex
	// Guarded by mu:
	marked      time.Time
	markAttempt int64
	backAt      []time.Duration // per agent: first welcome after mark, 0 if none yet
	back        int
}

func roleSwarm(args []string) error {
	fs := flag.NewFlagSet("swarm", flag.ContinueOnError)
	url := fs.String("url", "", "relay ws:// URL or nats host:port")
	proto := fs.String("proto", "tether", "tether or nats")
	tokensFile := fs.String("tokens", "", "file of 'device token' lines (tether)")
	n := fs.Int("n", 0, "connections (nats; tether uses every token)")
	inflight := fs.Int("inflight", 256, "dials in flight at most")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := &swarm{url: *url, proto: *proto, sem: make(chan struct{}, *inflight)}
	if s.proto == "tether" {
		toks, err := readTokens(*tokensFile)
		if err != nil {
			return err
		}
		for _, t := range toks {
			s.hdrs = append(s.hdrs, http.Header{"Authorization": {"Bearer " + t.token}})
		}
		*n = len(toks)
	}
	for i := range swarmSources {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}, Timeout: 10 * time.Second}
		s.dialers = append(s.dialers, d)
		s.ws = append(s.ws, &websocket.Dialer{
			NetDialContext:   d.DialContext,
			HandshakeTimeout: 10 * time.Second,
			Subprotocols:     []string{protocol.Version},
			ReadBufferSize:   512,
			WriteBufferSize:  512,
		})
	}
	s.backAt = make([]time.Duration, *n)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	start := time.Now()
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.agent(ctx, i)
		}()
	}
	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", a...)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for int(s.connected.Load()) < *n {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		say("up %d %d %d", *n, time.Since(start).Milliseconds(), s.attempts.Load())
	}()

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "mark":
			s.mu.Lock()
			s.marked, s.markAttempt, s.back = time.Now(), s.attempts.Load(), 0
			clear(s.backAt)
			s.mu.Unlock()
			say("marked")
		case "count":
			s.mu.Lock()
			back := s.back
			s.mu.Unlock()
			say("count %d %d", s.connected.Load(), back)
		case "report":
			s.mu.Lock()
			var ts []time.Duration
			for _, d := range s.backAt {
				if d > 0 {
					ts = append(ts, d)
				}
			}
			slices.Sort(ts)
			t99, t100 := int64(-1), int64(-1)
			if k := (len(s.backAt)*99 + 99) / 100; len(ts) >= k && k > 0 {
				t99 = ts[k-1].Milliseconds()
			}
			if len(ts) == len(s.backAt) && len(ts) > 0 {
				t100 = ts[len(ts)-1].Milliseconds()
			}
			att := s.attempts.Load() - s.markAttempt
			s.mu.Unlock()
			say("report %d %d %d %d", len(ts), t99, t100, att)
		}
	}
	cancel()
	wg.Wait()
	return nil
}

// agent keeps connection i up until ctx ends.
func (s *swarm) agent(ctx context.Context, i int) {
	bo := newJitter()
	for ctx.Err() == nil {
		start := time.Now()
		up, retryAfter, restart := s.session(ctx, i)
		if ctx.Err() != nil {
			return
		}
		if up && time.Since(start) >= swarmHealthy {
			bo.reset()
		}
		wait := bo.next()
		if restart >= 0 {
			// As the agent does: a relay shutting down names the moment
			// to come back.
			wait = restart
		} else if retryAfter > 0 {
			// As the agent does: Retry-After is in whole seconds, so a
			// second of jitter keeps a refused fleet from returning at
			// one instant.
			wait = max(wait, retryAfter+rand.N(time.Second))
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

// session dials once and holds the connection until it fails. It reports
// whether the handshake completed, any Retry-After, and the reconnect
// delay of a relay's restart close frame (negative if none).
func (s *swarm) session(ctx context.Context, i int) (up bool, retryAfter, restart time.Duration) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return false, 0, -1
	}
	s.attempts.Add(1)
	restart = -1
	var (
		hold func() // reads until the connection fails
		stop func()
	)
	if s.proto == "nats" {
		c, err := s.natsConnect(ctx, i)
		<-s.sem
		if err != nil {
			return false, 0, -1
		}
		hold, stop = func() { natsIdle(c) }, func() { c.Close() }
	} else {
		c, ra, err := s.tetherConnect(ctx, i)
		<-s.sem
		if err != nil {
			return false, ra, -1
		}
		hold, stop = func() {
			for {
				_, _, err := c.NextReader()
				if err == nil {
					continue
				}
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					if d, ok := protocol.ParseRestart(ce.Code, ce.Text); ok {
						restart = d
					}
				}
				return
			}
		}, func() { c.Close() }
	}
	s.connected.Add(1)
	s.mu.Lock()
	if !s.marked.IsZero() && s.backAt[i] == 0 {
		s.backAt[i] = time.Since(s.marked)
		s.back++
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-done:
		}
	}()
	hold()
	close(done)
	stop()
	s.connected.Add(-1)
	return true, 0, restart
}

func (s *swarm) tetherConnect(ctx context.Context, i int) (*websocket.Conn, time.Duration, error) {
	c, resp, err := s.ws[i%swarmSources].DialContext(ctx, s.url, s.hdrs[i])
	if err != nil {
		var ra time.Duration
		if resp != nil {
			if secs, _ := strconv.Atoi(resp.Header.Get("Retry-After")); secs > 0 {
				ra = time.Duration(secs) * time.Second
			}
		}
		return nil, ra, err
	}
	hello, _ := protocol.Encode(&protocol.Hello{Agent: "bench-swarm", Board: "none"})
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, hello); err != nil {
		c.Close()
		return nil, 0, err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	if m, err := protocol.Decode(b, 0); err != nil || m.MsgType() != "welcome" {
		c.Close()
		return nil, 0, fmt.Errorf("swarm: no welcome: %s", b)
	}
	c.SetReadDeadline(time.Time{})
	c.SetWriteDeadline(time.Time{})
	return c, 0, nil
}

func (s *swarm) natsConnect(ctx context.Context, i int) (net.Conn, error) {
	c, err := s.dialers[i%swarmSources].DialContext(ctx, "tcp", s.url)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		c.Close()
		return nil, err
	}
	if _, err := c.Write([]byte("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")); err != nil {
		c.Close()
		return nil, err
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if strings.HasPrefix(l, "PONG") {
			break
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// natsIdle answers the server's PINGs until the connection fails.
func natsIdle(c net.Conn) {
	r := bufio.NewReaderSize(c, 512)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(l, "PING") {
			if _, err := c.Write([]byte("PONG\r\n")); err != nil {
				return
			}
		}
	}
}

// jitter is the agent's reconnect schedule (agent/backoff.go): each wait
// uniform in [0, ceiling), the ceiling doubling from 500 ms to 30 s.
type jitter struct{ ceiling time.Duration }

func newJitter() *jitter { return &jitter{ceiling: swarmBackoffInitial} }
func (j *jitter) reset() { j.ceiling = swarmBackoffInitial }
func (j *jitter) next() time.Duration {
	d := rand.N(j.ceiling) + 1
	j.ceiling = min(2*j.ceiling, swarmBackoffMax)
	return d
}
