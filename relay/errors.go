package relay

import "errors"

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrNotFound reports an unknown request id.
	ErrNotFound = errors.New("relay: not found")
	// ErrUnknownDevice reports a device id that is not in the credentials.
	ErrUnknownDevice = errors.New("relay: unknown device")
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
