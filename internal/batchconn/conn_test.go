package batchconn

import (
	"errors"
	"net"
	"testing"
	"time"
)

// countingConn records the writes that reach the connection.
type countingConn struct {
	net.Conn
	writes    []string
	deadlines []time.Time
	err       error
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, string(p))
	return len(p), nil
}

func (c *countingConn) SetWriteDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return nil
}

func TestConnHoldsUntilFlush(t *testing.T) {
	under := &countingConn{}
	c := New(under)

	c.Write([]byte("a")) // not holding: straight through
	c.Hold()
	c.SetWriteDeadline(time.Unix(1, 0)) // ignored: flush sets the deadline
	c.Write([]byte("b"))
	c.Write([]byte("c"))
	if len(under.writes) != 1 || c.Held() != 2 || !c.Holding() {
		t.Fatalf("writes %q, %d held, holding %v: b and c must wait for flush", under.writes, c.Held(), c.Holding())
	}
	by := time.Unix(2, 0)
	if err := c.Flush(by); err != nil {
		t.Fatal(err)
	}
	if got := under.writes; len(got) != 2 || got[1] != "bc" {
		t.Fatalf("writes %q, want [a bc]", got)
	}
	if d := under.deadlines; len(d) != 1 || !d[0].Equal(by) {
		t.Fatalf("deadlines %v, want only the flush's", d)
	}
	if c.Holding() || c.Held() != 0 {
		t.Fatal("flush must stop holding")
	}
	if err := c.Flush(by); err != nil || len(under.writes) != 2 {
		t.Fatalf("a flush with nothing held wrote (%v)", err)
	}
}

func TestConnFlushErrorSticks(t *testing.T) {
	broken := errors.New("broken pipe")
	under := &countingConn{err: broken}
	c := New(under)
	c.Hold()
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatalf("held write: %v", err)
	}
	if err := c.Flush(time.Time{}); !errors.Is(err, broken) {
		t.Fatalf("flush: %v", err)
	}
	under.err = nil // a later write must not reach a connection that lost bytes
	if _, err := c.Write([]byte("b")); !errors.Is(err, broken) {
		t.Fatalf("write after a failed flush: %v", err)
	}
	if len(under.writes) != 0 {
		t.Fatalf("writes %q after the failure", under.writes)
	}
}
