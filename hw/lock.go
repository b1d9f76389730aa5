package hw

import "context"

// busLock serialises access to one peripheral. Unlike sync.Mutex, waiting
// for it gives up when the request's context ends, so a stuck or busy bus
// turns into a timeout instead of a hang.
type busLock chan struct{}

func newBusLock() busLock { return make(busLock, 1) }

// lock waits for the peripheral or for ctx to end.
func (l busLock) lock(ctx context.Context) error {
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l busLock) unlock() { <-l }
