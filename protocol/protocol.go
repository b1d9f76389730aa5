package protocol

import "time"

// Version is the protocol version and the WebSocket subprotocol that both
// ends must negotiate on /v1/agent.
const Version = "tether.v1"

// Default limits. Both ends may be configured lower; the relay announces its
// limits in Welcome.
const (
	// MaxFrame is the default largest frame, in bytes, either end accepts.
	MaxFrame = 64 << 10
	// MaxIDLen bounds request ids, method names and other identifiers.
	MaxIDLen = 128
	// MaxPull bounds the credits a single pull may grant.
	MaxPull = 1024
	// PingPeriod is how often each end pings by default. A connection that
	// is silent for 2.5 ping periods is dropped (see DeadAfter).
	PingPeriod = 20 * time.Second
)

// DeadAfter returns how long a connection may stay silent before the reader
// gives up on it: 2.5 ping periods, so one lost pong is tolerated but a
// half-open link is found within three periods.
func DeadAfter(ping time.Duration) time.Duration { return ping * 5 / 2 }

// Message types of tether.v1.
const (
	TypeHello   = "hello"   // agent → relay
	TypeWelcome = "welcome" // relay → agent
	TypePull    = "pull"    // agent → relay
	TypeRequest = "request" // relay → agent
	TypeResult  = "result"  // agent → relay
	TypeAck     = "ack"     // relay → agent
	TypeCancel  = "cancel"  // relay → agent
	TypeEvent   = "event"   // agent → relay
	TypeError   = "error"   // either
)

// Request states. Queued and Delivered are live; the rest are terminal.
const (
	StateQueued    = "queued"
	StateDelivered = "delivered"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateExpired   = "expired"
	StateCanceled  = "canceled"
)

// Terminal reports whether state ends a request's lifecycle.
func Terminal(state string) bool {
	switch state {
	case StateSucceeded, StateFailed, StateExpired, StateCanceled:
		return true
	}
	return false
}

// Error codes carried in Failure.Code.
const (
	CodeBadParams     = "bad_params"     // params malformed or out of range
	CodeNotFound      = "not_found"      // named resource does not exist
	CodeNotPermitted  = "not_permitted"  // resource exists but not for this use
	CodeHWError       = "hw_error"       // the peripheral failed
	CodeUnknownMethod = "unknown_method" // the device does not offer the method
	CodeInterrupted   = "interrupted"    // the agent crashed while running it
	CodeUndeliverable = "undeliverable"  // redelivered too often
	CodeExpired       = "expired"        // deadline passed before it started
	CodeCanceled      = "canceled"       // canceled by a client
	CodeTimeout       = "timeout"        // deadline passed while running
	CodeQueueFull     = "queue_full"     // the device queue is at its bound
	CodeInternal      = "internal"       // a bug; details in the message

	// Protocol-level codes used in Error frames.
	CodeBadFrame    = "bad_frame"    // malformed or invalid frame
	CodeTooLarge    = "too_large"    // frame over the size limit
	CodeUnknownType = "unknown_type" // type not in this protocol version
	CodeBadState    = "bad_state"    // frame not valid at this point
)
