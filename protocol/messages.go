package protocol

import (
	"encoding/json"
)

// Message is one tether.v1 frame. The concrete types are the pointer types
// below; Decode returns them already validated.
type Message interface {
	// MsgType returns the frame's "type" value.
	MsgType() string
	validate() error
}

// Resource describes one named peripheral an agent exposes.
type Resource struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "gpio", "i2c", "spi", "pwm"
	// Available is false when the resource is configured but could not be
	// opened on this board; Error then says why. The rest keeps working.
	Available bool   `json:"available"`
	Error     string `json:"error,omitempty"`
	// Info holds kind-specific details (direction, addresses, ...): a
	// JSON object. Agents set a struct; decoded, it is a map[string]any.
	Info any `json:"info,omitempty"`
}

// JournalSummary tells the relay what the agent still holds from before this
// session.
type JournalSummary struct {
	Outbox  int `json:"outbox"`  // results and events waiting for an ack
	Entries int `json:"entries"` // requests remembered for deduplication
}

// Hello is the agent's first frame on a session.
type Hello struct {
	Agent     string         `json:"agent"` // agent version
	Board     string         `json:"board"` // board name, e.g. "mock", "Raspberry Pi 4"
	Methods   []string       `json:"methods"`
	Resources []Resource     `json:"resources,omitempty"`
	Journal   JournalSummary `json:"journal"`
	// Running lists request ids the agent is executing right now, so that
	// after a reconnect the relay re-leases them to this session instead of
	// delivering them again.
	Running []string `json:"running,omitempty"`
	// Instance names the agent's state (its journal): the same after a
	// restart on the same state directory, new otherwise. A device whose
	// instance changed cannot answer for what the old one ran, so the
	// relay does not deliver again what may have run there (SPEC §7).
	Instance string `json:"instance,omitempty"`
}

// Welcome is the relay's answer to Hello.
type Welcome struct {
	Session  string `json:"session"`
	Device   string `json:"device"`
	Relay    string `json:"relay"`     // relay version
	MaxFrame int    `json:"max_frame"` // largest frame the relay accepts
	PingMs   int64  `json:"ping_ms"`   // relay's ping period; agents should match it
	// LastEvent is the seq of the last event the relay stored from this
	// device (0: none). An agent with no numbering of its own to go on
	// from (one without a journal, after a restart) numbers its events
	// above it, since the relay ignores an event at or below it.
	LastEvent uint64 `json:"last_event,omitempty"`
}

// Pull grants the relay N more credits: the relay may send N more requests.
type Pull struct {
	N int `json:"n"`
}

// Request hands one request to the agent. TimeoutMs is the time remaining
// until the request's deadline, measured when the relay sent the frame; the
// agent turns it into a deadline on its own monotonic clock.
type Request struct {
	ID         string          `json:"id"`
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	TimeoutMs  int64           `json:"timeout_ms"`
	Attempt    int             `json:"attempt"`
	Idempotent bool            `json:"idempotent,omitempty"`
}

// Result reports how a request ended. Exactly one of Value (succeeded) and
// Error (any other state) is set.
type Result struct {
	ID    string          `json:"id"`
	State string          `json:"state"`
	Value json.RawMessage `json:"value,omitempty"`
	Error *Failure        `json:"error,omitempty"`
	RunMs int64           `json:"run_ms"` // time spent in the handler
}

// Ack tells the agent that results and events are durably recorded and can
// be dropped from its outbox. Events acks every event with Seq <= Events.
type Ack struct {
	IDs    []string `json:"ids,omitempty"`
	Events uint64   `json:"events,omitempty"`
}

// Cancel asks the agent to stop request ID.
type Cancel struct {
	ID string `json:"id"`
}

// Event is a device-originated event. Seq increases by one per event over
// the agent's lifetime (it survives restarts). AgeMs is how long ago the
// event happened, so the relay can time-stamp it without trusting the
// board's clock.
type Event struct {
	Seq   uint64          `json:"seq"`
	Name  string          `json:"name"`
	Data  json.RawMessage `json:"data,omitempty"`
	AgeMs int64           `json:"age_ms"`
}

// Error reports a protocol violation. The sender closes the connection
// right after it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (*Hello) MsgType() string   { return TypeHello }
func (*Welcome) MsgType() string { return TypeWelcome }
func (*Pull) MsgType() string    { return TypePull }
func (*Request) MsgType() string { return TypeRequest }
func (*Result) MsgType() string  { return TypeResult }
func (*Ack) MsgType() string     { return TypeAck }
func (*Cancel) MsgType() string  { return TypeCancel }
func (*Event) MsgType() string   { return TypeEvent }
func (*Error) MsgType() string   { return TypeError }

// newMessage returns an empty message of the given type, or nil.
func newMessage(typ string) Message {
	switch typ {
	case TypeHello:
		return new(Hello)
	case TypeWelcome:
		return new(Welcome)
	case TypePull:
		return new(Pull)
	case TypeRequest:
		return new(Request)
	case TypeResult:
		return new(Result)
	case TypeAck:
		return new(Ack)
	case TypeCancel:
		return new(Cancel)
	case TypeEvent:
		return new(Event)
	case TypeError:
		return new(Error)
	}
	return newRotateMessage(typ)
}
