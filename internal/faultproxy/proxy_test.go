package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// target is a TCP server whose accepted connections the test can see.
type target struct {
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup
}

func newTarget(t *testing.T) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln, conns: make(chan net.Conn, 16)}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tg.wg.Wait()
		close(tg.conns)
		for c := range tg.conns {
			c.Close()
		}
	})
	return tg
}

func (tg *target) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-tg.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("target accepted nothing")
		return nil
	}
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Listen("127.0.0.1:0", target, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// pair dials through the proxy and returns both ends.
func pair(t *testing.T, p *Proxy, tg *target) (client, server net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, tg.accept(t)
}

func readFull(t *testing.T, c net.Conn, n int, d time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// wantSilent checks that c receives nothing, not even a close, for d.
func wantSilent(t *testing.T, c net.Conn, d time.Duration, who string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(make([]byte, 64))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read %d bytes, err %v; want silence", who, n, err)
	}
}

func waitLinks(t *testing.T, p *Proxy, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(p.Links()) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d links, want %d", len(p.Links()), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForwardsBothWaysAndPassesCloses(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	c, s := pair(t, p, tg)
	c.Write([]byte("ping"))
	if got := readFull(t, s, 4, 2*time.Second); string(got) != "ping" {
		t.Fatalf("server got %q", got)
	}
	s.Write([]byte("pong"))
	if got := readFull(t, c, 4, 2*time.Second); string(got) != "pong" {
		t.Fatalf("client got %q", got)
	}
	waitLinks(t, p, 1)
	c.Close()
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("server after client close: %v, want EOF", err)
	}
	waitLinks(t, p, 0)
}

func TestResetReachesBothEnds(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	c, s := pair(t, p, tg)
	waitLinks(t, p, 1)
	if n := p.Reset(); n != 1 {
		t.Fatalf("reset %d links", n)
	}
	for _, end := range []net.Conn{c, s} {
		end.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := end.Read(make([]byte, 1))
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after reset: %v, want connection reset", err)
		}
	}
	waitLinks(t, p, 0)
}

func TestBlackHoleIsHalfOpenFromBothEnds(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	c, s := pair(t, p, tg)
	waitLinks(t, p, 1)
	if n := p.BlackHole(); n != 1 {
		t.Fatalf("black-holed %d links", n)
	}
	if n := p.BlackHole(); n != 0 {
		t.Fatalf("black-holed %d links twice", n)
	}
	// Writes succeed on both ends and nothing arrives.
	if _, err := c.Write([]byte("hello?")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	wantSilent(t, s, 150*time.Millisecond, "server")
	wantSilent(t, c, 150*time.Millisecond, "client")
	// A close by one end is not passed on.
	c.Close()
	wantSilent(t, s, 150*time.Millisecond, "server after client close")
	waitLinks(t, p, 1)
	// New connections forward normally.
	c2, s2 := pair(t, p, tg)
	c2.Write([]byte("x"))
	readFull(t, s2, 1, 2*time.Second)
	c2.Close()
	s2.Close()
	// Once both ends of the black-holed link closed, it goes away.
	s.Close()
	waitLinks(t, p, 0)
}

func TestLatency(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	p.SetToxics(Toxics{Latency: 60 * time.Millisecond})
	c, s := pair(t, p, tg)
	start := time.Now()
	c.Write([]byte("a"))
	readFull(t, s, 1, 2*time.Second)
	s.Write([]byte("b"))
	readFull(t, c, 1, 2*time.Second)
	if rtt := time.Since(start); rtt < 120*time.Millisecond {
		t.Fatalf("round trip %v with 60ms latency each way", rtt)
	}
	// Clearing the toxics applies to the open link.
	p.SetToxics(Toxics{})
	start = time.Now()
	c.Write([]byte("a"))
	readFull(t, s, 1, 2*time.Second)
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("one way %v after clearing latency", d)
	}
}

// TestSlowAndPartialKeepTheStreamIntact sends random data through slow
// and partial writes and checks it arrives whole, in order, and no sooner
// than the pauses between the pieces allow. (How many reads it takes is
// no proof of pieces: a receiver scheduled late on a busy machine reads
// them all at once.)
func TestSlowAndPartialKeepTheStreamIntact(t *testing.T) {
	tests := []struct {
		name    string
		tox     Toxics
		minTime time.Duration
	}{
		{"slow", Toxics{SlowChunk: 100, SlowPause: time.Millisecond}, 20 * time.Millisecond},
		// At least one cut, and a millisecond's pause after it.
		{"partial", Toxics{Partial: true}, time.Millisecond},
		{"partial with latency", Toxics{Partial: true, Latency: 5 * time.Millisecond, Jitter: 5 * time.Millisecond}, 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := newTarget(t)
			p := newProxy(t, tg.ln.Addr().String())
			p.SetToxics(tt.tox)
			c, s := pair(t, p, tg)
			data := make([]byte, 4000)
			for i := range data {
				data[i] = byte(rand.N(256))
			}
			start := time.Now()
			go func() {
				for b := data; len(b) > 0; {
					n := min(len(b), 1+rand.N(700))
					c.Write(b[:n])
					b = b[n:]
				}
			}()
			s.SetReadDeadline(time.Now().Add(10 * time.Second))
			var got []byte
			buf := make([]byte, 8192)
			for len(got) < len(data) {
				n, err := s.Read(buf)
				if err != nil {
					t.Fatalf("after %d bytes: %v", len(got), err)
				}
				got = append(got, buf[:n]...)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("stream corrupted")
			}
			if d := time.Since(start); d < tt.minTime {
				t.Fatalf("took %v, want at least %v", d, tt.minTime)
			}
		})
	}
}

func TestTargetDownRefusesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := newProxy(t, addr)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // refused while connecting: fine
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read through a proxy to a dead target: %v", err)
	}
}

func TestCloseEndsBlackHoledLinks(t *testing.T) {
	tg := newTarget(t)
	p, err := Listen("127.0.0.1:0", tg.ln.Addr().String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	c, s := pair(t, p, tg)
	waitLinks(t, p, 1)
	p.BlackHole()
	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on a black-holed link")
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client after Close: %v", err)
	}
	_ = s
}

func TestRefuse(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	c, s := pair(t, p, tg)
	p.Refuse(true)
	c2, err := net.Dial("tcp", p.Addr())
	if err == nil {
		c2.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c2.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read on a refused connection: %v", err)
		}
		c2.Close()
	}
	// The open link still forwards.
	c.Write([]byte("x"))
	readFull(t, s, 1, 2*time.Second)
	p.Refuse(false)
	pair(t, p, tg)
}

// MuteReplies loses what the target sends while what the client sends
// still arrives; links made afterwards forward both ways.
func TestMuteReplies(t *testing.T) {
	tg := newTarget(t)
	p := newProxy(t, tg.ln.Addr().String())
	c, s := pair(t, p, tg)
	waitLinks(t, p, 1)
	if n := p.MuteReplies(); n != 1 {
		t.Fatalf("muted %d links", n)
	}
	c.Write([]byte("call"))
	if got := readFull(t, s, 4, 2*time.Second); string(got) != "call" {
		t.Fatalf("server got %q", got)
	}
	s.Write([]byte("answer"))
	wantSilent(t, c, 200*time.Millisecond, "client of a muted link")

	c2, s2 := pair(t, p, tg)
	s2.Write([]byte("hello"))
	if got := readFull(t, c2, 5, 2*time.Second); string(got) != "hello" {
		t.Fatalf("client of a later link got %q", got)
	}
}
