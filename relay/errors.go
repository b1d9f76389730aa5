package relay

import (
	"errors"

	"github.com/tetherhq/tether/protocol"
)

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrNotFound reports an unknown request id.
	ErrNotFound = errors.New("relay: not found")
	// ErrUnknownDevice reports a device id that is not in the credentials.
	ErrUnknownDevice = errors.New("relay: unknown device")
	// ErrUnknownClient reports a client name that is not in the credentials.
	ErrUnknownClient = errors.New("relay: unknown client")
	// ErrQueueFull reports that a device queue is at Config.QueueLimit.
	ErrQueueFull = errors.New("relay: queue full")
	// ErrTerminal reports an operation on a request that already ended.
	ErrTerminal = errors.New("relay: request already finished")
	// ErrExists reports a device or client that is already registered.
	ErrExists = errors.New("relay: already exists")
	// ErrInvalidName reports a device id or client name outside [A-Za-z0-9._-].
	ErrInvalidName = errors.New("relay: invalid name")
	// ErrClosed reports an operation on a server that is shutting down.
	ErrClosed = errors.New("relay: server closed")
)

// UnstoredError is a submission whose commit failed while its request may
// still run: it had reached the device's agent (delivery overlaps the
// commit), or its record could not be cut off the request log, which a
// restart would replay. The relay keeps it, and records its result once
// the store works again. Request is its record; a client told the id can
// follow it instead of submitting it again, which could run it twice.
type UnstoredError struct {
	Request protocol.Record
	Err     error
}

func (e *UnstoredError) Error() string {
	return "relay: storage failed for request " + e.Request.ID + ", which may still run: " + e.Err.Error()
}

func (e *UnstoredError) Unwrap() error { return e.Err }

// unstoredMessage is what a client is told of an UnstoredError.
const unstoredMessage = "relay storage failed, but the request may still run (it reached the device, or the relay may find it again after a restart): follow it by its id rather than submitting it again"
