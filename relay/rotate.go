package relay

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// In-band token rotation.
//
// `tether-relay device rotate ID` only records a request in
// credentials.json (Requested), so it works whether or not the relay runs
// and no plaintext token ever touches the disk. The running relay notices
// the request at its next credentials check (every SweepInterval) once the
// device has a live session, generates the new token itself, records its
// hash as Next and sends it in a rotate frame. Until the agent confirms
// with rotated, both the old and the new token authenticate. On
// confirmation the new token becomes the device's token and the old one
// keeps working for the grace period (Prev, PrevUntil), then stops. An
// agent that stored the new token but lost the session before confirming
// confirms implicitly by connecting with it. A session whose agent never
// confirms keeps the old token valid, and the next session gets a fresh
// token (the unconfirmed one is forgotten).
//
// `device revoke ID` deletes the device's entry; the running relay closes
// its session at the next check.

// rotationState is a device's rotation progress in credentials.json.
type rotationState struct {
	// Requested is when an admin asked for a rotation not yet confirmed.
	Requested *time.Time `json:"requested,omitempty"`
	// GraceMs overrides Config.RotateGrace for this rotation.
	GraceMs int64 `json:"grace_ms,omitempty"`
	// Next is the SHA-256 of the token sent to the agent and not yet
	// confirmed.
	Next string `json:"next_sha256,omitempty"`
	// Prev is the SHA-256 of the token the last confirmed rotation
	// replaced; it authenticates until PrevUntil.
	Prev      string     `json:"prev_sha256,omitempty"`
	PrevUntil *time.Time `json:"prev_until,omitempty"`
}

// tokenKind says which of a device's tokens a hash is.
type tokenKind int

const (
	tokenCurrent tokenKind = iota
	tokenNext
	tokenPrev
)

// deviceToken is one accepted token hash of a device.
type deviceToken struct {
	device string
	hash   string
	kind   tokenKind
	until  time.Time // tokenPrev only
}

func indexDeviceTokens(devs []credEntry) map[string]deviceToken {
	m := make(map[string]deviceToken, len(devs))
	for _, e := range devs {
		m[strings.ToLower(e.SHA256)] = deviceToken{device: e.Name, hash: strings.ToLower(e.SHA256), kind: tokenCurrent}
		r := e.Rotation
		if r == nil {
			continue
		}
		if r.Next != "" {
			m[strings.ToLower(r.Next)] = deviceToken{device: e.Name, hash: strings.ToLower(r.Next), kind: tokenNext}
		}
		if r.Prev != "" && r.PrevUntil != nil {
			m[strings.ToLower(r.Prev)] = deviceToken{device: e.Name, hash: strings.ToLower(r.Prev), kind: tokenPrev, until: *r.PrevUntil}
		}
	}
	return m
}

// authDevice finds the device owning token, accepting its current token,
// a rotation's next one, and the previous one within its grace period.
func (c *credCache) authDevice(token string, now time.Time) (deviceToken, bool) {
	if !strings.HasPrefix(token, DeviceTokenPrefix) {
		return deviceToken{}, false
	}
	sum := sha256.Sum256([]byte(token))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	t, ok := c.tokens[hex.EncodeToString(sum[:])]
	if !ok {
		return deviceToken{}, false
	}
	want, err := hex.DecodeString(t.hash)
	if err != nil || subtle.ConstantTimeCompare(want, sum[:]) != 1 {
		return deviceToken{}, false
	}
	if t.kind == tokenPrev && !now.Before(t.until) {
		return deviceToken{}, false
	}
	return t, true
}

// credView is a consistent read-only view of the credentials. The cache
// replaces its maps on reload and never changes them in place, so a view
// can be read without the lock.
type credView struct {
	names   map[string]credEntry
	tokens  map[string]deviceToken
	clients map[string]credEntry // by client name
}

// view reloads the file if it changed and returns the current view.
func (c *credCache) view() credView {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	return c.viewLocked()
}

func (c *credCache) viewLocked() credView {
	return credView{names: c.names, tokens: c.tokens, clients: c.clientNames}
}

// tokenValid reports whether hash still authenticates device.
func (v credView) tokenValid(device, hash string, now time.Time) bool {
	t, ok := v.tokens[hash]
	return ok && t.device == device && (t.kind != tokenPrev || now.Before(t.until))
}

// updateCredentials applies fn to dir's credentials under the lock and
// writes them back atomically.
func updateCredentials(dir string, fn func(*credentials) error) error {
	unlock, err := lockFile(filepath.Join(dir, credentialsLock))
	if err != nil {
		return fmt.Errorf("relay: credentials lock: %w", err)
	}
	defer unlock()
	c, err := readCredentials(dir)
	if err != nil {
		return err
	}
	if err := fn(c); err != nil {
		return err
	}
	return writeCredentials(dir, c)
}

func findDevice(c *credentials, id string) *credEntry {
	for i := range c.Devices {
		if c.Devices[i].Name == id {
			return &c.Devices[i]
		}
	}
	return nil
}

// RotateDevice asks for device id's token to be rotated in-band: the
// relay serving dir sends a new token to the device's agent over its live
// session (now, or when it next connects). grace is how long the old token
// keeps working after the agent confirmed; 0 means the relay's
// RotateGrace. It works whether or not a relay is running.
func RotateDevice(dir, id string, grace time.Duration) error {
	if grace < 0 || grace > protocol.MaxGraceMs*time.Millisecond {
		return fmt.Errorf("relay: grace %v out of range", grace)
	}
	return updateCredentials(dir, func(c *credentials) error {
		e := findDevice(c, id)
		if e == nil {
			return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
		}
		if e.Rotation == nil {
			e.Rotation = &rotationState{}
		}
		now := time.Now().UTC()
		e.Rotation.Requested = &now
		e.Rotation.GraceMs = grace.Milliseconds()
		return nil
	})
}

// RevokeDevice deletes device id's credentials: none of its tokens
// authenticates any more, and a running relay closes its session within
// one SweepInterval. Its stored requests and events stay.
func RevokeDevice(dir, id string) error {
	return updateCredentials(dir, func(c *credentials) error {
		e := findDevice(c, id)
		if e == nil {
			return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
		}
		c.Devices = slices.DeleteFunc(c.Devices, func(e credEntry) bool { return e.Name == id })
		return nil
	})
}

// RevokeClient deletes client name's API key: it no longer authenticates,
// its unspent tickets open nothing, and a running relay refuses the calls
// of the client's open WebSockets at once and closes them within one
// SweepInterval. Its requests stay.
func RevokeClient(dir, name string) error {
	return updateCredentials(dir, func(c *credentials) error {
		n := len(c.Clients)
		c.Clients = slices.DeleteFunc(c.Clients, func(e credEntry) bool { return e.Name == name })
		if len(c.Clients) == n {
			return fmt.Errorf("%w: %q", ErrUnknownClient, name)
		}
		return nil
	})
}

// RevokeClient is the package function for this server's data directory;
// it closes the client's WebSockets at once.
func (s *Server) RevokeClient(name string) error {
	if err := RevokeClient(s.cfg.DataDir, name); err != nil {
		return err
	}
	s.checkCredentials(time.Now())
	return nil
}

// RotateDevice is the package function for this server's data directory;
// it starts the rotation at once if the device is connected.
func (s *Server) RotateDevice(id string, grace time.Duration) error {
	if err := RotateDevice(s.cfg.DataDir, id, grace); err != nil {
		return err
	}
	s.checkCredentials(time.Now())
	return nil
}

// RevokeDevice is the package function for this server's data directory;
// it closes the device's session at once.
func (s *Server) RevokeDevice(id string) error {
	if err := RevokeDevice(s.cfg.DataDir, id); err != nil {
		return err
	}
	s.checkCredentials(time.Now())
	return nil
}

// agentAuth is how a session's agent authenticated, and where its token
// rotation stands.
type agentAuth struct {
	srv     *Server
	viaCert bool
	ready   atomic.Bool // welcome queued: other relay frames may follow

	mu sync.Mutex
	// Guarded by mu:
	hash    string // token hash the session stands on; "" with a certificate
	pending string // hash of the token offered in a rotate frame
	grace   time.Duration
}

// welcomed marks the session ready for rotate frames.
func (a *agentAuth) welcomed() {
	if a != nil {
		a.ready.Store(true)
	}
}

// rotations tracks the live agent sessions for credential checks.
type rotations struct {
	checkMu sync.Mutex // serializes checkCredentials

	mu sync.Mutex
	// Guarded by mu:
	live map[*session]struct{}
}

func newRotations() *rotations { return &rotations{live: make(map[*session]struct{})} }

func (r *rotations) add(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.live[s] = struct{}{}
}

func (r *rotations) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.live, s)
}

func (r *rotations) snapshot() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.live))
}

// checkCredentials closes sessions whose device was revoked or whose
// token stopped working, and starts requested rotations on live sessions.
// Run calls it every SweepInterval.
func (s *Server) checkCredentials(now time.Time) {
	s.guard.rot.checkMu.Lock()
	defer s.guard.rot.checkMu.Unlock()
	v := s.creds.view()
	for _, sess := range s.guard.rot.snapshot() {
		a := sess.auth
		e, ok := v.names[sess.device]
		if !ok {
			sess.log().Warn("device credentials revoked; closing its session")
			sess.stop(websocket.ClosePolicyViolation, "credentials revoked")
			continue
		}
		a.mu.Lock()
		hash, pending := a.hash, a.pending
		a.mu.Unlock()
		if !a.viaCert && !v.tokenValid(sess.device, hash, now) {
			sess.log().Warn("device token no longer valid; closing its session")
			sess.stop(websocket.ClosePolicyViolation, "credentials expired")
			continue
		}
		if r := e.Rotation; r != nil && r.Requested != nil && !a.viaCert && pending == "" && a.ready.Load() {
			if err := s.startRotation(sess, r.GraceMs); err != nil {
				sess.log().Error("token rotation not started", "err", err)
			}
		}
	}
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	for c, id := range s.clients {
		if e, ok := v.clients[id.name]; !ok || !e.hasKey(id.key) {
			c.log.Warn("client credentials revoked; closing its connection")
			c.stop(websocket.ClosePolicyViolation, "credentials revoked")
		}
	}
}

// startRotation issues a new token for sess's device, records its hash as
// Next and sends it to the agent.
func (s *Server) startRotation(sess *session, graceMs int64) error {
	token, err := newSecret(DeviceTokenPrefix)
	if err != nil {
		return err
	}
	hash := hashSecret(token)
	err = updateCredentials(s.cfg.DataDir, func(c *credentials) error {
		e := findDevice(c, sess.device)
		if e == nil || e.Rotation == nil || e.Rotation.Requested == nil {
			return fmt.Errorf("%w: %q: no rotation requested", ErrUnknownDevice, sess.device)
		}
		e.Rotation.Next = hash
		return nil
	})
	if err != nil {
		return err
	}
	grace := time.Duration(graceMs) * time.Millisecond
	if grace <= 0 {
		grace = s.cfg.RotateGrace
	}
	a := sess.auth
	a.mu.Lock()
	a.pending, a.grace = hash, grace
	a.mu.Unlock()
	sess.log().Info("rotating device token", "grace", grace)
	sess.offer(&protocol.Rotate{Token: token, GraceMs: grace.Milliseconds()})
	return nil
}

// rotated handles the agent's confirmation; it reports whether the
// session goes on.
func (a *agentAuth) rotated(sess *session) bool {
	if a == nil {
		return true
	}
	a.mu.Lock()
	pending, grace := a.pending, a.grace
	a.mu.Unlock()
	if pending == "" {
		sess.log().Warn("rotated without a rotation in progress; ignored")
		return true
	}
	if err := a.srv.promote(sess.device, pending, grace); err != nil {
		// The agent uses the new token from now on; it stays valid as
		// Next, and the next connection with it confirms again.
		sess.log().Error("token rotation not recorded", "err", err)
		return true
	}
	a.mu.Lock()
	a.hash, a.pending = pending, ""
	a.mu.Unlock()
	sess.log().Info("device token rotated", "old_valid_for", grace)
	return true
}

// promote makes hash (a rotation's Next) the device's token; the replaced
// one works for grace more.
func (s *Server) promote(device, hash string, grace time.Duration) error {
	return updateCredentials(s.cfg.DataDir, func(c *credentials) error {
		e := findDevice(c, device)
		if e == nil {
			return fmt.Errorf("%w: %q", ErrUnknownDevice, device)
		}
		r := e.Rotation
		if r == nil || r.Next != hash {
			return fmt.Errorf("relay: rotation of %s was superseded", device)
		}
		if grace <= 0 {
			grace = time.Duration(r.GraceMs) * time.Millisecond
		}
		if grace <= 0 {
			grace = s.cfg.RotateGrace
		}
		until := time.Now().Add(grace).UTC()
		r.Prev, r.PrevUntil = e.SHA256, &until
		e.SHA256, r.Next, r.Requested, r.GraceMs = hash, "", nil, 0
		return nil
	})
}

// offer queues m for the writer without blocking. A session whose queue
// is full is not keeping up and is closed: the caller (the sweeper) must
// never wait on one slow agent.
func (s *session) offer(m protocol.Message) {
	b, err := protocol.Encode(m)
	if err != nil {
		s.log().Error("encode", "type", m.MsgType(), "err", err)
		return
	}
	if !s.push(b, false) && !s.closing() {
		s.log().Warn("send queue full; closing a slow session")
		s.stop(websocket.ClosePolicyViolation, "send queue full")
	}
}

// authAgent identifies the device of an /v1/agent request: by its bearer
// token if it sent one, else by a verified client certificate. A
// rotation's next token confirms that rotation; if that confirmation
// cannot be recorded, the agent is told to come back (retry), since a
// session standing on an unconfirmed token could see it superseded by
// the next rotation, after the agent had thrown the old one away.
func (s *Server) authAgent(r *http.Request) (dev string, auth *agentAuth, ok, retry bool) {
	if token := bearer(r.Header.Get("Authorization")); token != "" {
		t, ok := s.creds.authDevice(token, time.Now())
		if !ok {
			return "", nil, false, false
		}
		if t.kind == tokenNext {
			// The agent stored the new token but its confirmation was
			// lost with the previous session.
			if err := s.promote(t.device, t.hash, 0); err != nil {
				s.log.Warn("implicit rotation confirmation not recorded; the agent is to retry", "device", t.device, "err", err)
				return "", nil, false, true
			}
			s.log.Info("device token rotated (confirmed on reconnect)", "device", t.device)
		}
		return t.device, &agentAuth{srv: s, hash: t.hash}, true, false
	}
	if dev, ok := s.certDevice(r.TLS); ok {
		return dev, &agentAuth{srv: s, viaCert: true}, true, false
	}
	return "", nil, false, false
}
