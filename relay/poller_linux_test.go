//go:build linux

package relay

import (
	"net"
	"testing"
	"time"
)

// waitResult is what one poller.wait saw.
type waitResult struct {
	ready []uint32 // keys, in the order ready was called
	took  time.Duration
	err   error
}

func pollOnce(p *poller, timeout time.Duration) <-chan waitResult {
	ch := make(chan waitResult, 1)
	go func() {
		var r waitResult
		start := time.Now()
		r.err = p.wait(timeout, func(fd int32, key uint32) { r.ready = append(r.ready, key) })
		r.took = time.Since(start)
		ch <- r
	}()
	return ch
}

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func fdOf(t *testing.T, c *net.TCPConn) int32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int32
	rc.Control(func(f uintptr) { fd = int32(f) })
	return fd
}

// The loop's waits park in Go's poller (the epoll fd is watched there),
// so these check what the loop relies on: readiness with its key, one-shot
// until re-armed, the timeout, and wake.
func TestPollerWait(t *testing.T) {
	p, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	c, s := tcpPair(t)
	fd := fdOf(t, s)
	if err := p.add(fd, 7); err != nil {
		t.Fatal(err)
	}

	// Nothing ready: the timeout ends the wait, with no readiness.
	r := <-pollOnce(p, 20*time.Millisecond)
	if r.err != nil || len(r.ready) != 0 || r.took < 15*time.Millisecond {
		t.Fatalf("idle wait: %+v", r)
	}

	// Data on the socket: the wait reports the key, well before its
	// timeout.
	done := pollOnce(p, 10*time.Second)
	time.Sleep(10 * time.Millisecond) // let it park first
	c.Write([]byte("x"))
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not see the readable socket")
	}
	if r.err != nil || len(r.ready) != 1 || r.ready[0] != 7 {
		t.Fatalf("readable wait: %+v", r)
	}

	// One-shot: the unread byte does not fire again until re-armed.
	r = <-pollOnce(p, 20*time.Millisecond)
	if r.err != nil || len(r.ready) != 0 {
		t.Fatalf("wait before re-arm: %+v", r)
	}
	if err := p.rearm(fd, 7); err != nil {
		t.Fatal(err)
	}
	r = <-pollOnce(p, 5*time.Second)
	if r.err != nil || len(r.ready) != 1 || r.ready[0] != 7 {
		t.Fatalf("wait after re-arm: %+v", r)
	}

	// wake ends a wait with no timeout, without reporting readiness;
	// called before the wait, it ends the next one.
	done = pollOnce(p, -1)
	time.Sleep(10 * time.Millisecond)
	p.wake()
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wake did not end the wait")
	}
	if r.err != nil || len(r.ready) != 0 {
		t.Fatalf("woken wait: %+v", r)
	}
	p.wake()
	select {
	case r = <-pollOnce(p, -1):
	case <-time.After(5 * time.Second):
		t.Fatal("an earlier wake did not end the next wait")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
}
