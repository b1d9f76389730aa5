package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// Server is a tether relay. Create it with New, serve Handler (or call
// ListenAndServe), run Run for its background work, and Close it at the end.
type Server struct {
	cfg      Config
	log      *slog.Logger
	st       *store
	creds    *credCache
	hub      *hub
	upgrader websocket.Upgrader
	sessions tracker // agent sessions and /v1/client connections
	agents   reactor // readiness and timers of the agent sessions
	tickets  ticketStore
	guard    *guard // TLS, admission, rate limits, token rotation
	met      *metrics

	// clients are the open /v1/client connections, with the client and
	// key they authenticated as, so that a revoked key's are closed.
	clientsMu sync.Mutex
	clients   map[*clientConn]clientID
	// clientConns counts each client's connections, upgrades under way
	// included (Config.ClientConns).
	clientConns map[string]int

	// storeMu keeps the store open for a Backup in progress; Close sets
	// storeClosed under it.
	storeMu     sync.RWMutex
	storeClosed bool
	// adminOn is set while a Serve listens on the admin socket.
	adminMu sync.Mutex
	adminOn bool

	shutdownOnce sync.Once
	shutdown     chan struct{} // closed when the server stops serving
	closeOnce    sync.Once
	closeErr     error
}

// New opens the store in cfg.DataDir, rebuilds the queues from it and loads
// the credentials.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("relay: DataDir is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("relay: data dir: %w", err)
	}
	creds, err := newCredCache(cfg.DataDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	g, err := newGuard(cfg)
	if err != nil {
		creds.close()
		return nil, err
	}
	st, err := openStore(filepath.Join(cfg.DataDir, "relay.db"), cfg.Logger)
	if err != nil {
		creds.close()
		return nil, err
	}
	h, err := newHub(cfg, st)
	if err != nil {
		st.abandonStart()
		creds.close()
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		st:       st,
		creds:    creds,
		hub:      h,
		guard:    g,
		shutdown: make(chan struct{}),
		upgrader: websocket.Upgrader{
			Subprotocols:     []string{protocol.Version},
			HandshakeTimeout: cfg.WriteTimeout,
			Error:            upgradeError,
			// Most sessions are idle most of the time. Without the pool,
			// gorilla keeps net/http's 4 KiB write buffer for the life of
			// every connection; with it a session borrows a write buffer
			// per frame. ReadBufferSize stays 0: upgradeAgent supplies
			// the read buffer.
			WriteBufferPool: &agentWriteBuffers,
		},
	}
	s.sessions.live = make(map[*session]struct{})
	s.met = newMetrics(s)
	h.met = s.met // before anyone can reach h
	return s, nil
}

// Config returns the effective configuration, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// Run does the relay's background work (expiry of queued requests, result
// retention) until ctx ends. It then ends long-polls, closes every agent
// session with a close frame, and returns once all of them have stopped.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.stopServing()
			s.sessions.wait()
			return nil
		case now := <-t.C:
			s.hub.sweep(now)
			s.checkCredentials(now)
		}
	}
}

// stopServing refuses new sessions, ends long-polls and asks every session
// to close.
func (s *Server) stopServing() {
	s.shutdownOnce.Do(func() { close(s.shutdown) })
	s.sessions.closeAll(protocol.CloseRestart, s.restartReasons())
}

// restartBase is the earliest an agent is asked back after a shutdown: a
// relay being restarted is usually listening again within it.
const restartBase = time.Second

// restartHeadroom is the share of the admission rate the returning fleet
// is planned to use, leaving room for jitter and for agents that were not
// connected.
const restartHeadroom = 0.9

// restartReasons returns the close reasons of a shutdown: each agent is
// asked back at its own moment, restartBase after the close and then one
// admission slot apart, so a whole fleet reconnects once each at the rate
// the relay admits instead of storming it and being refused. Agents that
// ignore the reason fall back to their jittered backoff.
func (s *Server) restartReasons() func() string {
	every := time.Duration(float64(time.Second) / (s.cfg.AdmitRate * restartHeadroom))
	if math.IsInf(s.cfg.AdmitRate, 1) {
		every = 0
	}
	every = min(every, protocol.MaxRestartDelay-restartBase)
	next := restartBase
	return func() string {
		d := next
		next += every
		if next > protocol.MaxRestartDelay {
			// Agents read a longer delay as the longest: the sessions
			// past it are spread over the window again rather than all
			// asked back at its end together.
			next = restartBase
		}
		return protocol.RestartReason(d)
	}
}

// Close stops serving, waits for the sessions to end and closes the store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stopServing()
		s.sessions.wait()
		s.hub.behind.Wait()
		s.storeMu.Lock()
		s.storeClosed = true
		s.storeMu.Unlock()
		s.closeErr = s.st.close()
		s.creds.close()
	})
	return s.closeErr
}

// ListenAndServe serves on cfg.Listen until ctx ends, then shuts down
// gracefully: it stops accepting, ends long-polls, closes agent sessions
// with a close frame and waits for all of it. It does not Close the store.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: listen: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve is ListenAndServe on an existing listener, which it closes.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.guard.tls != nil {
		ln = tls.NewListener(ln, s.guard.tls.config())
	}
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ReadTimeout, // and the submit body (handleSubmit)
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.log.Info("relay listening", "addr", ln.Addr().String(), "version", s.cfg.Version)

	stopAdmin := s.serveAdmin()
	defer stopAdmin()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	serveErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		serveErr <- hs.Serve(ln)
	}()
	go func() {
		defer wg.Done()
		s.Run(runCtx)
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	// Stop accepting first, then end sessions and long-polls; Shutdown
	// waits for the HTTP requests, which end once shutdown is closed.
	stopRun()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if serr := hs.Shutdown(sctx); serr != nil {
		// Requests still open at the deadline are cut; the store is
		// closed cleanly all the same, so this is no failure of the relay.
		s.log.Warn("shutdown: requests still open after the shutdown timeout were closed", "timeout", s.cfg.ShutdownTimeout, "err", serr)
		hs.Close()
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("relay: serve: %w", err)
	}
	s.log.Info("relay stopped")
	return nil
}

// agentWriteBuffers lends agent connections their write buffers, which are
// needed only while a frame is written.
var agentWriteBuffers sync.Pool

// handleAgent serves GET /v1/agent: authentication and subprotocol are
// checked before the upgrade so refusals are plain HTTP with a JSON body.
func (s *Server) handleAgent(w http.ResponseWriter, r *http.Request) {
	admittedAt, ok := s.admitAgent(w, r)
	if !ok {
		return
	}
	dev, auth, ok, retry := s.authAgent(r)
	if retry {
		noteRefusal(r, refusedRotation)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "the device's new token could not be recorded yet; try again")
		return
	}
	if !ok {
		noteRefusal(r, refusedUnauthorized)
		writeError(w, http.StatusUnauthorized, codeUnauthorized, "missing or invalid device token")
		return
	}
	noteOf(r).device = dev
	if !websocket.IsWebSocketUpgrade(r) {
		noteRefusal(r, refusedNotWebSocket)
		writeError(w, http.StatusBadRequest, codeBadRequest, "WebSocket upgrade required")
		return
	}
	if !slices.Contains(websocket.Subprotocols(r), protocol.Version) {
		noteRefusal(r, refusedSubprotocol)
		writeError(w, http.StatusBadRequest, codeBadRequest, "unsupported subprotocol, want "+protocol.Version)
		return
	}
	if !s.sessions.add() {
		noteRefusal(r, refusedShutdown)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "relay is shutting down")
		return
	}
	if !s.guard.admit.open() {
		s.sessions.done()
		noteRefusal(r, refusedMaxConns)
		refuseBusy(w, fullRetryAfter, "relay is at its connection limit")
		return
	}

	conn, br, err := upgradeAgent(&s.upgrader, w, r)
	if err != nil {
		s.guard.admit.close()
		s.sessions.done()
		return // the upgrader has answered
	}
	s.guard.admit.admitted(admittedAt)
	sess := newSession(conn, br, dev, &s.cfg, s.hub)
	sess.auth = auth
	s.sessions.register(sess)
	s.guard.rot.add(sess)
	// The handler returns while the session goes on, owned and waited
	// for by s.sessions: net/http then drops the hijacked connection's
	// buffers, the request and the handler's deep stack, which it would
	// otherwise hold for the life of every idle session. An idle session
	// holds no goroutine at all (see reactor).
	sess.start(&s.agents, func() {
		s.guard.rot.remove(sess)
		s.sessions.unregister(sess)
		s.guard.admit.close()
		s.sessions.done()
	})
}

// tracker owns the agent sessions so that shutdown can close them and wait.
type tracker struct {
	wg sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu:
	closed    bool
	closeCode int
	closeText func() string // the close reason of the next session stopped
	live      map[*session]struct{}
}

// add counts a session about to start; it fails once shutdown began.
func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

// register makes s reachable for closeAll. A session registered after
// closeAll is stopped at once.
func (t *tracker) register(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live[s] = struct{}{}
	if t.closed {
		s.stop(t.closeCode, t.closeText())
	}
}

func (t *tracker) unregister(s *session) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.live, s)
}

// closeAll stops every session, now and later, with code and a reason
// from text, which is called once per session.
func (t *tracker) closeAll(code int, text func() string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed, t.closeCode, t.closeText = true, code, text
	}
	for s := range t.live {
		s.stop(t.closeCode, t.closeText())
	}
}

func (t *tracker) wait() { t.wg.Wait() }
