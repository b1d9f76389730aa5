package relay

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/tetherhq/tether/protocol"
)

// Scope limits what a client key may reach. Each list holds path.Match
// patterns ("pi-*", "gpio.*"); an empty list means no restriction. Device
// ids and method names contain no '/', so '*' spans the whole rest of a
// name.
type Scope struct {
	Devices []string `json:"devices,omitempty"`
	Methods []string `json:"methods,omitempty"`

	none bool // allows nothing: the scope of an unregistered client
}

// ParseScope reads comma-separated pattern lists as the admin command's
// --devices and --methods flags give them, and checks every pattern.
func ParseScope(devices, methods string) (Scope, error) {
	var sc Scope
	var err error
	if sc.Devices, err = patterns("devices", devices); err != nil {
		return Scope{}, err
	}
	if sc.Methods, err = patterns("methods", methods); err != nil {
		return Scope{}, err
	}
	return sc, nil
}

func patterns(what, list string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("relay: --%s pattern %q: %w", what, p, err)
		}
		out = append(out, p)
	}
	if len(out) == 0 && list != "" {
		// " " or "," would otherwise mean no limit at all.
		return nil, fmt.Errorf("relay: --%s %q names no pattern; leave it out for no limit", what, list)
	}
	return out, nil
}

// Restricted reports whether the scope limits anything.
func (sc Scope) Restricted() bool { return sc.none || len(sc.Devices) > 0 || len(sc.Methods) > 0 }

// AllowsDevice reports whether device id is in scope.
func (sc Scope) AllowsDevice(id string) bool { return !sc.none && matchAny(sc.Devices, id) }

// AllowsMethod reports whether method is in scope.
func (sc Scope) AllowsMethod(method string) bool { return !sc.none && matchAny(sc.Methods, method) }

func matchAny(pats []string, s string) bool {
	if len(pats) == 0 {
		return true
	}
	for _, p := range pats {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

func (sc Scope) String() string {
	d, m := "*", "*"
	if len(sc.Devices) > 0 {
		d = strings.Join(sc.Devices, ",")
	}
	if len(sc.Methods) > 0 {
		m = strings.Join(sc.Methods, ",")
	}
	return "devices=" + d + " methods=" + m
}

type clientKey struct{}

// WithClient returns ctx carrying the authenticated client's name. Every
// client transport must attach it before calling the ClientService, so
// that Authorize and Submit apply the client's scope and rate limit.
func WithClient(ctx context.Context, name string) context.Context {
	return withClientID(ctx, clientID{name: name})
}

// clientID is what a client authenticated as: its name, and the SHA-256
// (hex) of the key it presented. A key revoked and added again under the
// same name is a new key: what the old one opened (a WebSocket, tickets)
// must not go on as the client the new key stands for.
type clientID struct {
	name string
	key  string // empty: any key of the client's (WithClient)
}

// withClientID is WithClient for id, which also ties ctx to id's key:
// Authorize refuses everything once that key is no longer the client's.
// One value, as every REST call makes one.
func withClientID(ctx context.Context, id clientID) context.Context {
	return context.WithValue(ctx, clientKey{}, &id)
}

// keyHashFrom returns the key hash withClientID attached to ctx, or "".
func keyHashFrom(ctx context.Context) string {
	if id, ok := ctx.Value(clientKey{}).(*clientID); ok {
		return id.key
	}
	return ""
}

// ClientFrom returns the client name WithClient attached to ctx.
func ClientFrom(ctx context.Context) (string, bool) {
	if id, ok := ctx.Value(clientKey{}).(*clientID); ok {
		return id.name, true
	}
	return "", false
}

// ClientScope returns the scope of client name: nothing for a name that
// is not (or no longer) registered, such as a removed client whose
// WebSocket is still open.
func (s *Server) ClientScope(name string) Scope { return s.creds.clientScope(name) }

// Authorize checks that the client in ctx may use device and, when method
// is not empty, method. It is the one scope check: Submit calls it, the
// REST handlers call it for reads and cancels, and the client WebSocket
// must call it for subscriptions. A ctx without a client (in-process
// callers, tests) is trusted. Refusals wrap ErrForbidden.
func (s *Server) Authorize(ctx context.Context, device, method string) error {
	name, ok := ClientFrom(ctx)
	if !ok {
		return nil
	}
	sc, _ := s.scopeAndDevice(ctx, name, "")
	return sc.authorize(name, device, method)
}

// authorizeDevice is Authorize, then checkDevice, on one read of the
// credentials: a submit needs both.
func (s *Server) authorizeDevice(ctx context.Context, device, method string) error {
	name, isClient := ClientFrom(ctx)
	sc, known := s.scopeAndDevice(ctx, name, device)
	if isClient {
		if err := sc.authorize(name, device, method); err != nil {
			return err
		}
	}
	if !known {
		return fmt.Errorf("%w: %q", ErrUnknownDevice, device)
	}
	return nil
}

// authorize refuses what sc does not allow client name: device, and
// method unless it is empty.
func (sc Scope) authorize(name, device, method string) error {
	if sc.none {
		return fmt.Errorf("%w: the key of client %s is no longer registered", ErrForbidden, name)
	}
	if !sc.AllowsDevice(device) {
		return fmt.Errorf("%w: client %s may not use device %q", ErrForbidden, name, device)
	}
	if method != "" && !sc.AllowsMethod(method) {
		return fmt.Errorf("%w: client %s may not call method %q", ErrForbidden, name, method)
	}
	return nil
}

// AddClientScoped is AddClient for a key limited to sc.
func AddClientScoped(dir, name string, sc Scope) (string, error) {
	return addCredential(dir, name, ClientKeyPrefix, func(c *credentials) *[]credEntry { return &c.Clients },
		func(e *credEntry) { e.Devices, e.Methods = sc.Devices, sc.Methods })
}

// clientScope returns the scope stored for client name.
func (c *credCache) clientScope(name string) Scope {
	sc, _ := c.scopeAndDevice(name, "", "")
	return sc
}

// scopeAndDevice returns the scope stored for client name (nothing if the
// name is not registered, or, when keyHash is not empty, no longer with
// that key) and whether device is registered.
func (c *credCache) scopeAndDevice(name, keyHash, device string) (Scope, bool) {
	return c.view().scopeAndDevice(name, keyHash, device)
}

// scopeAndDevice is credCache.scopeAndDevice in v.
func (v credView) scopeAndDevice(name, keyHash, device string) (Scope, bool) {
	e, ok := v.clients[name]
	_, known := v.names[device]
	if !ok || !e.hasKey(keyHash) {
		return Scope{none: true}, known
	}
	return Scope{Devices: e.Devices, Methods: e.Methods}, known
}

// credViewKey is the context key of the credentials a REST call's key was
// checked against (reqState).
type credViewKey struct{}

// scopeAndDevice is credCache.scopeAndDevice for the client in ctx (name,
// the one ClientFrom returns): in the credentials its key was checked
// against if ctx is a REST call's, which checked it a moment ago, and in
// the file as it is now otherwise. A key revoked since the call began
// cannot be told apart from one revoked just after it.
func (s *Server) scopeAndDevice(ctx context.Context, name, device string) (Scope, bool) {
	if v, ok := ctx.Value(credViewKey{}).(*credView); ok {
		return v.scopeAndDevice(name, keyHashFrom(ctx), device)
	}
	return s.creds.scopeAndDevice(name, keyHashFrom(ctx), device)
}

// hasClient reports whether id's key is still registered as its client's.
func (c *credCache) hasClient(id clientID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	e, ok := c.clientNames[id.name]
	return ok && e.hasKey(id.key)
}

// hasKey reports whether e's key has hash keyHash (SHA-256 hex); an empty
// keyHash asks nothing of the key.
func (e credEntry) hasKey(keyHash string) bool {
	return keyHash == "" || strings.EqualFold(e.SHA256, keyHash)
}

// scopedDevices is Devices filtered to the scope of the client in ctx.
func (s *Server) scopedDevices(ctx context.Context) []protocol.DeviceInfo {
	all := s.Devices()
	name, ok := ClientFrom(ctx)
	if !ok {
		return all
	}
	sc, _ := s.scopeAndDevice(ctx, name, "")
	out := all[:0]
	for _, d := range all {
		if sc.AllowsDevice(d.ID) {
			out = append(out, d)
		}
	}
	return out
}

// authorizeRequest checks the client in ctx against request id's device
// and method. An unknown id passes: the caller answers 404.
func (s *Server) authorizeRequest(ctx context.Context, id string) error {
	if _, ok := ClientFrom(ctx); !ok {
		return nil
	}
	rec, err := s.Request(id)
	if err != nil {
		return nil
	}
	return s.Authorize(ctx, rec.Device, rec.Method)
}
