//go:build linux

package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// poller is the loop's epoll instance. Watched connections are registered
// one-shot: after an event the fd stays quiet until the read turn it
// started re-arms it, so at most one read turn runs per connection. Each
// event carries the fd and a key; the key tells a stale event for a
// closed and reused fd from one for its new owner.
//
// The loop never blocks a thread in epoll_wait. The epoll fd is itself
// watched by Go's network poller (an epoll instance is readable while it
// has events), so a loop with nothing to do parks like any goroutine
// waiting for the network and gives its processor back at once. A thread
// blocked in epoll_wait kept its processor: goroutines readied just
// before (a client's writer, a result's waiter) could wait on it, stuck,
// until another thread woke up to take them, 100-200 µs on a small
// virtual machine.
type poller struct {
	ep     *os.File        // the epoll fd, owned; non-blocking, in Go's poller
	rc     syscall.RawConn // ep's, for waiting on it
	epfd   int
	wakefd int // eventfd that interrupts a wait; registered with key 0
	events [128]unix.EpollEvent
}

// watchEvents is one-shot readiness: data, an error, or the peer's close.
const watchEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("relay: epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("relay: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("relay: epoll: %w", err)
	}
	// Non-blocking, so that os.NewFile hands it to Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("relay: epoll: %w", err)
	}
	ep := os.NewFile(uintptr(epfd), "epoll")
	rc, err := ep.SyscallConn()
	if err == nil {
		// Fails unless Go's poller took the fd: waits would not park.
		err = ep.SetReadDeadline(time.Time{})
	}
	if err != nil {
		ep.Close()
		unix.Close(wakefd)
		return nil, fmt.Errorf("relay: epoll fd not pollable: %w", err)
	}
	return &poller{ep: ep, rc: rc, epfd: epfd, wakefd: wakefd}, nil
}

func (p *poller) usable() bool { return true }

func (p *poller) add(fd int32, key uint32) error {
	ev := unix.EpollEvent{Events: watchEvents, Fd: fd, Pad: int32(key)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
}

func (p *poller) rearm(fd int32, key uint32) error {
	ev := unix.EpollEvent{Events: watchEvents, Fd: fd, Pad: int32(key)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
}

func (p *poller) remove(fd int32) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
}

// wait parks until a watched fd is ready, timeout passes (< 0: never) or
// wake is called, and calls ready for each ready fd.
func (p *poller) wait(timeout time.Duration, ready func(fd int32, key uint32)) error {
	var deadline time.Time // zero: none
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	if err := p.ep.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("relay: epoll wait: %w", err)
	}
	var werr error
	err := p.rc.Read(func(uintptr) bool {
		// Collect without blocking; with nothing ready, Go's poller
		// parks this goroutine until the epoll fd becomes readable.
		n, err := unix.EpollWait(p.epfd, p.events[:], 0)
		switch {
		case err == unix.EINTR:
			// Parking now could miss events already queued (their
			// edge has passed): return, and the loop asks again.
			return true
		case err != nil:
			werr = err
			return true
		case n == 0:
			return false
		}
		for _, ev := range p.events[:n] {
			if ev.Pad == 0 && ev.Fd == int32(p.wakefd) {
				var b [8]byte
				unix.Read(p.wakefd, b[:])
				continue
			}
			ready(ev.Fd, uint32(ev.Pad))
		}
		return true
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("relay: epoll wait: %w", err)
	}
	return nil
}

// wake interrupts a wait, or the next one.
func (p *poller) wake() {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	unix.Write(p.wakefd, b[:])
}

func (p *poller) close() {
	p.ep.Close()
	unix.Close(p.wakefd)
}
