package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// ClientService is what a client transport needs from the relay. The REST
// API is built on it, and so will be the /v1/client WebSocket: submit, get,
// cancel and wait for requests, read devices, and follow a device's events
// and presence. *Server implements it.
type ClientService interface {
	// AuthenticateClient returns the client name owning key.
	AuthenticateClient(key string) (name string, ok bool)
	// Devices describes every registered device.
	Devices() []protocol.DeviceInfo
	// Device describes one device, or fails with ErrUnknownDevice.
	Device(id string) (protocol.DeviceInfo, error)
	// Submit stores and queues a request; the record it returns is durable.
	Submit(ctx context.Context, device string, sub protocol.Submit) (protocol.Record, error)
	// Request returns a request's current record, or ErrNotFound.
	Request(id string) (protocol.Record, error)
	// WaitRequest blocks until the request is terminal, ctx ends or the
	// server stops, and returns its record at that moment.
	WaitRequest(ctx context.Context, id string) (protocol.Record, error)
	// Cancel cancels a request: a queued one ends canceled at once, a
	// delivered one gets a cancel sent to its agent (and stays delivered
	// until the agent answers). A finished one yields ErrTerminal and its
	// record.
	Cancel(id string) (protocol.Record, error)
	// Events returns up to limit stored events of device with Seq > after.
	Events(device string, after uint64, limit int) ([]protocol.EventRecord, error)
	// DeviceChanged returns a channel closed at the device's next event or
	// presence change. Read the state, then wait on a fresh channel; no
	// unsubscription is needed.
	DeviceChanged(device string) (<-chan struct{}, error)
	// Done is closed when the server stops serving; long waits end there.
	Done() <-chan struct{}
}

var _ ClientService = (*Server)(nil)

// AuthenticateClient returns the client name owning key.
func (s *Server) AuthenticateClient(key string) (string, bool) {
	id, ok := s.creds.client(key)
	return id.name, ok
}

// Devices describes every device registered in the credentials.
func (s *Server) Devices() []protocol.DeviceInfo {
	ids := s.creds.deviceIDs()
	out := make([]protocol.DeviceInfo, 0, len(ids))
	for _, id := range ids {
		out = append(out, s.hub.deviceInfo(id))
	}
	return out
}

// Device describes device id.
func (s *Server) Device(id string) (protocol.DeviceInfo, error) {
	if err := s.checkDevice(id); err != nil {
		return protocol.DeviceInfo{}, err
	}
	return s.hub.deviceInfo(id), nil
}

// Pending returns the requests of device id that have not ended, in the
// order its agent gets them (the ones it runs now first), leaving out
// those whose method the client in ctx may not call.
func (s *Server) Pending(ctx context.Context, id string) ([]protocol.Record, error) {
	// One read of the credentials, before the hub's lock is taken.
	name, isClient := ClientFrom(ctx)
	sc, known := s.scopeAndDevice(ctx, name, id)
	keep := func(string) bool { return true }
	if isClient {
		if err := sc.authorize(name, id, ""); err != nil {
			return nil, err
		}
		keep = sc.AllowsMethod
	}
	if !known {
		return nil, fmt.Errorf("%w: %q", ErrUnknownDevice, id)
	}
	return s.hub.pending(id, keep), nil
}

func (s *Server) checkDevice(id string) error {
	if !s.creds.hasDevice(id) {
		return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
	}
	return nil
}

// Submit validates sub, stores it durably for device and queues it.
// Validation failures are *protocol.Failure with code bad_params.
func (s *Server) Submit(ctx context.Context, device string, sub protocol.Submit) (protocol.Record, error) {
	q, err := s.enqueue(ctx, device, sub)
	if err != nil {
		return protocol.Record{}, err
	}
	return q.commit()
}

// enqueue is Submit in two steps: it validates and queues the request,
// whose commit stores it and returns its durable record.
func (s *Server) enqueue(ctx context.Context, device string, sub protocol.Submit) (queued, error) {
	if err := sub.Validate(); err != nil {
		return queued{}, err
	}
	// The agent refuses a frame over MaxFrame, and ends the session that
	// sent it: such a request could only cost the device its link, once
	// per attempt, before failing as undeliverable.
	if n := requestFrameMax(&sub); n > s.cfg.MaxFrame {
		return queued{}, protocol.Errorf(protocol.CodeTooLarge,
			"request too large: its frame to the device could take %d bytes, over the limit of %d", n, s.cfg.MaxFrame)
	}
	// Scope before existence, so a scoped key cannot probe device ids.
	if err := s.authorizeDevice(ctx, device, sub.Method); err != nil {
		return queued{}, err
	}
	owner, _ := ClientFrom(ctx)
	// A repeat of a keyed submission the relay keeps adds nothing to the
	// queue: like a get, it is not counted against the submit rates, or a
	// client repeating a submission whose answer was lost would be told
	// 429 for a request that exists and may run.
	if sub.Key == "" || !s.hub.keyKept(owner, sub.Key) {
		if err := s.limitSubmit(ctx, device); err != nil {
			return queued{}, err
		}
	}
	select {
	case <-s.shutdown:
		return queued{}, ErrClosed
	default:
	}
	return s.hub.enqueue(device, owner, sub)
}

// Request returns request id's current record.
func (s *Server) Request(id string) (protocol.Record, error) { return s.hub.get(id) }

// WaitRequest blocks until request id is terminal, ctx ends or the server
// stops serving, and returns its record at that moment.
func (s *Server) WaitRequest(ctx context.Context, id string) (protocol.Record, error) {
	return s.hub.wait(ctx, id, s.shutdown, 0)
}

// Cancel cancels request id; see ClientService.
func (s *Server) Cancel(id string) (protocol.Record, error) { return s.hub.cancel(id) }

// Events returns up to limit events of device with Seq > after, oldest
// first.
func (s *Server) Events(device string, after uint64, limit int) ([]protocol.EventRecord, error) {
	if err := s.checkDevice(device); err != nil {
		return nil, err
	}
	limit = min(max(limit, 1), s.cfg.EventsKept)
	return s.st.events(device, after, limit)
}

// DeviceChanged returns a channel closed at device's next event or
// presence change.
func (s *Server) DeviceChanged(device string) (<-chan struct{}, error) {
	if err := s.checkDevice(device); err != nil {
		return nil, err
	}
	return s.hub.changed(device), nil
}

// Done is closed when the server stops serving.
func (s *Server) Done() <-chan struct{} { return s.shutdown }

// requestFrameMax is the most bytes a request frame for sub can take: its
// method and params as submitted, with a relay's request id and the
// largest timeout and attempt count (protocol.Request's frame).
func requestFrameMax(sub *protocol.Submit) int {
	const fixed = len(`{"type":"request","id":`) + len(`,"method":`) + len(`,"params":`) +
		len(`,"timeout_ms":`) + len(`,"attempt":`) + 2*20 + len(`,"idempotent":true}`)
	return fixed + requestIDLen + 2 + jsonLen(sub.Method) + len(sub.Params)
}

// requestIDLen is the length of the relay's request ids (hex digits).
var requestIDLen = len(newRequestID(time.Time{}))

// jsonLen is the length of s as a JSON string, quotes included, the way
// protocol encodes it: identifiers are printable ASCII, where only a few
// characters take an escape; any other byte is counted at the most an
// escape can take.
func jsonLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			n++
		case c == '<' || c == '>' || c == '&' || c < ' ' || c > '~':
			n += 5 // \u003c
		}
	}
	return n
}
