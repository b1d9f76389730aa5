package relay

import (
	"container/heap"
	"errors"
	"net"
	"sync"
	"time"
)

// reactor serves the agent sessions of a Server so that an idle session
// holds no goroutine. Its loop is one goroutine for all of them: it waits
// for watched connections to become readable (epoll on Linux, see
// poller_linux.go) and for the sessions' timers (pings, silence), and
// starts a read turn or a writer only when there is work.
//
// The loop runs while the reactor has sessions: the first session starts
// it and the last one stops it and waits for it, so the loop is owned,
// like every goroutine of a session, by the server's session tracker. The
// zero reactor is ready to use.
type reactor struct {
	mu sync.Mutex
	// Guarded by mu:
	cur   *loop
	users int
}

// acquire returns the running loop, starting one if needed. Every acquire
// is paired with a release.
func (r *reactor) acquire() (*loop, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		l, err := newLoop()
		if err != nil {
			return nil, err
		}
		r.cur = l
		go l.run()
	}
	r.users++
	return r.cur, nil
}

// release gives back l; the last user stops it and waits for it.
func (r *reactor) release(l *loop) {
	r.mu.Lock()
	r.users--
	last := r.users == 0
	if last {
		r.cur = nil
	}
	r.mu.Unlock()
	if last {
		l.stop()
	}
}

// loop is one generation of the reactor's goroutine and its poller.
type loop struct {
	p    *poller
	base time.Time     // the zero of the sessions' timers
	done chan struct{} // closed when run returns
	// work runs the sessions' read turns and writers; it ends with the
	// loop, after the last session.
	work *workers

	mu sync.Mutex
	// Guarded by mu:
	timers   timerHeap          // sessions by due
	watched  map[int32]*session // by fd
	nextKey  uint32             // key of the next watched fd; 0 is the poller's own
	wakeAt   time.Duration      // when the loop wakes next; -1: when woken
	stopping bool
}

func newLoop() (*loop, error) {
	p, err := newPoller()
	if err != nil {
		return nil, err
	}
	return &loop{
		p:       p,
		base:    time.Now(),
		done:    make(chan struct{}),
		work:    newWorkers(),
		watched: make(map[int32]*session),
		nextKey: 1,
		wakeAt:  -1,
	}, nil
}

func (l *loop) now() time.Duration { return time.Since(l.base) }

// run waits for readable connections and due timers until stop.
func (l *loop) run() {
	defer close(l.done)
	for {
		l.mu.Lock()
		if l.stopping {
			l.mu.Unlock()
			return
		}
		now := l.now()
		for len(l.timers) > 0 && l.timers[0].due <= now {
			s := l.timers[0]
			s.due = s.tick(now)
			heap.Fix(&l.timers, 0)
		}
		timeout := time.Duration(-1)
		l.wakeAt = -1
		if len(l.timers) > 0 {
			l.wakeAt = l.timers[0].due
			timeout = l.wakeAt - now
		}
		l.mu.Unlock()
		if err := l.p.wait(timeout, l.ready); err != nil {
			// Not expected (EINTR is retried); do not spin on it.
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// ready starts a read turn on the session that watches fd under key.
func (l *loop) ready(fd int32, key uint32) {
	l.mu.Lock()
	s := l.watched[fd]
	l.mu.Unlock()
	if s != nil && s.key == key {
		s.readable()
	}
}

// stop ends run, waits for it and closes the poller.
func (l *loop) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.p.wake()
	<-l.done
	l.p.close()
	l.work.close()
}

// schedule has the loop tick s at due.
func (l *loop) schedule(s *session, due time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setDueLocked(s, due)
}

// scheduleBy has the loop tick s at due at the latest.
func (l *loop) scheduleBy(s *session, due time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.forgotten || s.slot >= 0 && s.due <= due {
		return
	}
	l.setDueLocked(s, due)
}

func (l *loop) setDueLocked(s *session, due time.Duration) {
	s.due = due
	if s.slot < 0 {
		heap.Push(&l.timers, s)
	} else {
		heap.Fix(&l.timers, s.slot)
	}
	if l.wakeAt < 0 || due < l.wakeAt {
		l.wakeAt = due
		l.p.wake()
	}
}

// watch has the loop start read turns on s when its connection becomes
// readable. It reports false when the connection cannot be watched: a
// TLS connection may hold decrypted data the socket no longer shows, so
// only plain TCP connections are, and only where there is a poller.
func (l *loop) watch(s *session) bool {
	tc, ok := s.out.Conn.(*net.TCPConn)
	if !ok || !l.p.usable() {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	key := l.nextKey
	if l.nextKey++; l.nextKey == 0 {
		l.nextKey = 1
	}
	var werr error
	err = rc.Control(func(fd uintptr) {
		s.fd, s.key = int32(fd), key
		werr = l.p.add(s.fd, key)
	})
	if err != nil || werr != nil {
		s.log().Warn("connection not watched; reading it on a goroutine", "err", errors.Join(err, werr))
		return false
	}
	s.polled = true
	l.watched[s.fd] = s
	return true
}

// rearm has the loop watch s's connection again after a read turn.
func (l *loop) rearm(s *session) error { return l.p.rearm(s.fd, s.key) }

// forget drops s's timers and stops watching its connection, which must
// still be open.
func (l *loop) forget(s *session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.forgotten = true
	if s.slot >= 0 {
		heap.Remove(&l.timers, s.slot)
	}
	if s.polled {
		if l.watched[s.fd] == s {
			delete(l.watched, s.fd)
		}
		l.p.remove(s.fd)
	}
}

// timerHeap orders sessions by their next tick.
type timerHeap []*session

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].slot, h[j].slot = i, j
}

func (h *timerHeap) Push(x any) {
	s := x.(*session)
	s.slot = len(*h)
	*h = append(*h, s)
}

func (h *timerHeap) Pop() any {
	old := *h
	n := len(old) - 1
	s := old[n]
	old[n] = nil
	s.slot = -1
	*h = old[:n]
	return s
}
