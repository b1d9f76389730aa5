//go:build linux

package relay

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// poller is the loop's epoll instance. Watched connections are registered
// one-shot: after an event the fd stays quiet until the read turn it
// started re-arms it, so at most one read turn runs per connection. Each
// event carries the fd and a key; the key tells a stale event for a
// closed and reused fd from one for its new owner.
type poller struct {
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
	return &poller{epfd: epfd, wakefd: wakefd}, nil
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

// wait blocks until a watched fd is ready, timeout passes (< 0: never) or
// wake is called, and calls ready for each ready fd.
func (p *poller) wait(timeout time.Duration, ready func(fd int32, key uint32)) error {
	ms := -1
	if timeout >= 0 {
		// Round up: waking early would only spin until the timer is due.
		ms = int(min((timeout+time.Millisecond-1)/time.Millisecond, math.MaxInt32))
	}
	n, err := unix.EpollWait(p.epfd, p.events[:], ms)
	if err == unix.EINTR {
		return nil
	}
	if err != nil {
		return fmt.Errorf("relay: epoll wait: %w", err)
	}
	for _, ev := range p.events[:n] {
		if ev.Pad == 0 && ev.Fd == int32(p.wakefd) {
			var b [8]byte
			unix.Read(p.wakefd, b[:])
			continue
		}
		ready(ev.Fd, uint32(ev.Pad))
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
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}
