//go:build !linux

package relay

import (
	"errors"
	"time"
)

// poller has no readiness notification here: every agent session reads
// its connection on a goroutine of its own, and the loop only runs the
// sessions' timers.
type poller struct {
	wakec chan struct{}
}

var errNoPoller = errors.New("relay: no readiness poller on this platform")

func newPoller() (*poller, error) { return &poller{wakec: make(chan struct{}, 1)}, nil }

func (p *poller) usable() bool                     { return false }
func (p *poller) add(fd int32, key uint32) error   { return errNoPoller }
func (p *poller) rearm(fd int32, key uint32) error { return errNoPoller }
func (p *poller) remove(fd int32) error            { return errNoPoller }
func (p *poller) close()                           {}

// wait blocks until timeout passes (< 0: never) or wake is called.
func (p *poller) wait(timeout time.Duration, ready func(fd int32, key uint32)) error {
	if timeout < 0 {
		<-p.wakec
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.wakec:
	case <-t.C:
	}
	return nil
}

// wake interrupts a wait, or the next one.
func (p *poller) wake() {
	select {
	case p.wakec <- struct{}{}:
	default:
	}
}
