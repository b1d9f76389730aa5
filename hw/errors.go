package hw

import "errors"

// Sentinel errors. Callers test for them with errors.Is.
var (
	// ErrClosed is returned by a Board that has been closed.
	ErrClosed = errors.New("hw: board closed")
	// ErrRunning is returned by Run when another Run is still active.
	ErrRunning = errors.New("hw: board already running")
	// ErrGPIOAccess is wrapped by Open when the GPIO device nodes exist but
	// this process may not open them.
	ErrGPIOAccess = errors.New("hw: gpio access refused")
	// ErrInvalidConfig is wrapped by every configuration error.
	ErrInvalidConfig = errors.New("hw: invalid config")
)
