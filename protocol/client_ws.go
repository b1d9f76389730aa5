package protocol

import (
	"bytes"
	"encoding/json"
	"time"
)

// ClientPath is where a relay serves the device-A WebSocket. CLIENT.md in
// this directory describes it; the frames below are its reference types.
const ClientPath = "/v1/client"

// MaxClientFrame is the default largest frame a relay accepts from a
// client on /v1/client. Params of a call live inside it.
const MaxClientFrame = 64 << 10

// Frame types of the client WebSocket. cancel, result, event and error
// reuse the names of tether.v1 (TypeCancel, TypeResult, TypeEvent,
// TypeError) but are different frames on a different endpoint.
const (
	TypeCall        = "call"        // client → relay
	TypeGet         = "get"         // client → relay
	TypeSubscribe   = "subscribe"   // client → relay
	TypeUnsubscribe = "unsubscribe" // client → relay
	TypeAccepted    = "accepted"    // relay → client
	TypePresence    = "presence"    // relay → client
)

// ClientCall submits a request to a device, like POST
// /v1/devices/{device}/requests. Ref is the client's own correlation tag,
// echoed in the answers; it may be empty.
type ClientCall struct {
	Ref        string          `json:"ref,omitempty"`
	Device     string          `json:"device"`
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	Timeout    Duration        `json:"timeout,omitempty"`
	Idempotent bool            `json:"idempotent,omitempty"`
	Key        string          `json:"key,omitempty"` // see Submit.Key
}

// Submit returns the call as a REST submission.
func (m *ClientCall) Submit() Submit {
	return Submit{Method: m.Method, Params: m.Params, Timeout: m.Timeout, Idempotent: m.Idempotent, Key: m.Key}
}

// ClientGet attaches the connection to request ID: the relay answers with
// its current record and pushes a result when it ends.
type ClientGet struct {
	Ref string `json:"ref,omitempty"`
	ID  string `json:"id"`
}

// ClientCancel cancels request ID and attaches the connection to it.
type ClientCancel struct {
	Ref string `json:"ref,omitempty"`
	ID  string `json:"id"`
}

// ClientSubscribe starts the event and presence stream of Device. With
// After set, stored events with a larger seq are replayed first; without
// it only new events are pushed.
type ClientSubscribe struct {
	Ref    string  `json:"ref,omitempty"`
	Device string  `json:"device"`
	After  *uint64 `json:"after,omitempty"`
}

// ClientUnsubscribe stops the stream of Device.
type ClientUnsubscribe struct {
	Ref    string `json:"ref,omitempty"`
	Device string `json:"device"`
}

// ClientAccepted tells the client that request ID exists and is still
// live; Request is its record at that moment. A result follows.
type ClientAccepted struct {
	Ref     string `json:"ref,omitempty"`
	ID      string `json:"id"`
	Request Record `json:"request"`
}

// ClientResult reports that request ID ended. Result is set when State is
// succeeded, Error otherwise; Request is the full final record.
type ClientResult struct {
	ID      string          `json:"id"`
	Ref     string          `json:"ref,omitempty"`
	State   string          `json:"state"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Failure        `json:"error,omitempty"`
	Request Record          `json:"request"`
}

// NewClientResult builds the result frame of a finished record.
func NewClientResult(ref string, rec Record) *ClientResult {
	return &ClientResult{ID: rec.ID, Ref: ref, State: rec.State, Result: rec.Result, Error: rec.Error, Request: rec}
}

// ClientEvent is one device event of a subscribed device.
type ClientEvent struct {
	Device string          `json:"device"`
	Seq    uint64          `json:"seq"`
	Name   string          `json:"name"`
	Data   json.RawMessage `json:"data,omitempty"`
	Time   time.Time       `json:"time"`
}

// ClientPresence reports whether a subscribed device is connected. The
// relay sends one right after subscribe and one at every change.
type ClientPresence struct {
	Device   string     `json:"device"`
	Online   bool       `json:"online"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// Seq, in the first presence of a subscription only, is the event seq
	// its stream goes on from: the after it was given, or the last event
	// stored when it was given none. A client that keeps it can resume
	// after a reconnect without a gap, even before its first event.
	Seq *uint64 `json:"seq,omitempty"`
}

// ClientError reports a frame the relay could not act on. Ref (and ID for
// request frames) point at the frame that caused it. The connection stays
// open unless a close frame follows.
type ClientError struct {
	Ref     string `json:"ref,omitempty"`
	ID      string `json:"id,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (*ClientCall) MsgType() string        { return TypeCall }
func (*ClientGet) MsgType() string         { return TypeGet }
func (*ClientCancel) MsgType() string      { return TypeCancel }
func (*ClientSubscribe) MsgType() string   { return TypeSubscribe }
func (*ClientUnsubscribe) MsgType() string { return TypeUnsubscribe }
func (*ClientAccepted) MsgType() string    { return TypeAccepted }
func (*ClientResult) MsgType() string      { return TypeResult }
func (*ClientEvent) MsgType() string       { return TypeEvent }
func (*ClientPresence) MsgType() string    { return TypePresence }
func (*ClientError) MsgType() string       { return TypeError }

// newClientMessage returns an empty client → relay frame of type typ.
func newClientMessage(typ string) Message {
	switch typ {
	case TypeCall:
		return new(ClientCall)
	case TypeGet:
		return new(ClientGet)
	case TypeCancel:
		return new(ClientCancel)
	case TypeSubscribe:
		return new(ClientSubscribe)
	case TypeUnsubscribe:
		return new(ClientUnsubscribe)
	}
	return nil
}

// newPushMessage returns an empty relay → client frame of type typ.
func newPushMessage(typ string) Message {
	switch typ {
	case TypeAccepted:
		return new(ClientAccepted)
	case TypeResult:
		return new(ClientResult)
	case TypeEvent:
		return new(ClientEvent)
	case TypePresence:
		return new(ClientPresence)
	case TypeError:
		return new(ClientError)
	}
	return nil
}

// DecodeClient parses and validates one frame a client sent on
// /v1/client. Frames longer than max bytes are refused before parsing
// (max <= 0 means MaxClientFrame). Every error is a *Failure: too_large,
// unknown_type and bad_frame for the frame's shape, bad_params for a call
// whose method, params or timeout are unusable.
func DecodeClient(frame []byte, max int) (Message, error) {
	if max <= 0 {
		max = MaxClientFrame
	}
	return decodeFrom(frame, max, newClientMessage)
}

// DecodePush parses and validates one frame a relay sent on /v1/client.
// Go clients use it; max <= 0 means 16 MiB, since a result may carry a
// whole request record.
func DecodePush(frame []byte, max int) (Message, error) {
	if max <= 0 {
		max = 16 << 20
	}
	return decodeFrom(frame, max, newPushMessage)
}

// decodeFrom is the one decoder of both protocols: size check, type,
// strict JSON decode into the type newFn picks, then validation. The
// frames of every request are decoded without reflection when they can
// be (fastdecode.go), with the same result.
func decodeFrom(frame []byte, max int, newFn func(string) Message) (Message, error) {
	if len(frame) > max {
		return nil, Errorf(CodeTooLarge, "frame of %d bytes exceeds limit of %d", len(frame), max)
	}
	typ, ok := leadingType(frame) // the decode below checks the whole frame anyway
	if !ok {
		// json.Unmarshal moves head to the heap; declared here, only
		// this path pays for that.
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(frame, &head); err != nil {
			return nil, Errorf(CodeBadFrame, "not a JSON object with a string type: %v", err)
		}
		typ = head.Type
	}
	if typ == "" {
		return nil, Errorf(CodeBadFrame, "type missing")
	}
	m := newFn(typ)
	if m == nil {
		return nil, Errorf(CodeUnknownType, "unknown type %q", clip(typ))
	}
	if !decodeFast(m, frame) {
		if _, tried := m.(fastDecoder); tried {
			m = newFn(typ) // a failed fast decode may have filled some of it
		}
		if err := json.Unmarshal(frame, m); err != nil {
			return nil, Errorf(CodeBadFrame, "%s: %v", typ, err)
		}
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// leadingType returns the type of a frame that starts as Encode starts
// every frame, {"type":"NAME", with a NAME free of escapes, sparing a
// decode of the whole frame just to learn its type. Other frames take
// the general path. (A frame that names its type twice is malformed; it
// gets the first one here, where encoding/json would take the last.)
func leadingType(frame []byte) (string, bool) {
	const prefix = `{"type":"`
	if !bytes.HasPrefix(frame, []byte(prefix)) {
		return "", false
	}
	rest := frame[len(prefix):]
	end := bytes.IndexByte(rest, '"')
	if end <= 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return "", false
	}
	return string(rest[:end]), true
}

// checkRef allows an empty ref; otherwise it follows the identifier rule.
func checkRef(typ, ref string) error {
	if ref == "" {
		return nil
	}
	return checkID(typ+": ref", ref)
}

func (m *ClientCall) validate() error {
	if err := checkRef("call", m.Ref); err != nil {
		return err
	}
	if err := checkID("call: device", m.Device); err != nil {
		return err
	}
	sub := m.Submit()
	return sub.Validate()
}

func (m *ClientGet) validate() error {
	if err := checkRef("get", m.Ref); err != nil {
		return err
	}
	return checkID("get: id", m.ID)
}

func (m *ClientCancel) validate() error {
	if err := checkRef("cancel", m.Ref); err != nil {
		return err
	}
	return checkID("cancel: id", m.ID)
}

func (m *ClientSubscribe) validate() error {
	if err := checkRef("subscribe", m.Ref); err != nil {
		return err
	}
	return checkID("subscribe: device", m.Device)
}

func (m *ClientUnsubscribe) validate() error {
	if err := checkRef("unsubscribe", m.Ref); err != nil {
		return err
	}
	return checkID("unsubscribe: device", m.Device)
}

func (m *ClientAccepted) validate() error {
	if err := checkID("accepted: id", m.ID); err != nil {
		return err
	}
	if m.Request.ID != m.ID {
		return invalid("accepted: request.id %q differs from id", clip(m.Request.ID))
	}
	return nil
}

func (m *ClientResult) validate() error {
	if err := checkID("result: id", m.ID); err != nil {
		return err
	}
	if !Terminal(m.State) {
		return invalid("result: state %q is not terminal", clip(m.State))
	}
	if m.State != StateSucceeded && (m.Error == nil || m.Error.Code == "") {
		return invalid("result: state %s needs an error with a code", m.State)
	}
	if m.Request.ID != m.ID {
		return invalid("result: request.id %q differs from id", clip(m.Request.ID))
	}
	return nil
}

func (m *ClientEvent) validate() error {
	if err := checkID("event: device", m.Device); err != nil {
		return err
	}
	if m.Seq == 0 {
		return invalid("event: seq must be >= 1")
	}
	return checkID("event: name", m.Name)
}

func (m *ClientPresence) validate() error { return checkID("presence: device", m.Device) }

func (m *ClientError) validate() error {
	if m.Code == "" {
		return invalid("error: code missing")
	}
	return nil
}
