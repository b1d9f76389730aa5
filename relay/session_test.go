package relay

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// The session knows whether a frame is buffered only because gorilla reads
// through the bufio.Reader that upgradeAgent hands it. If gorilla kept a
// buffer of its own, the bytes peeked here would never reach NextReader.
func TestUpgradeAgentSharesReadBuffer(t *testing.T) {
	type upgraded struct {
		conn *websocket.Conn
		err  error
		msg  string
	}
	res := make(chan upgraded, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := websocket.Upgrader{WriteBufferPool: &agentWriteBuffers}
		conn, br, err := upgradeAgent(&u, w, r)
		if err != nil {
			res <- upgraded{err: err}
			return
		}
		conn.SetReadDeadline(time.Now().Add(waitLimit))
		if _, err := br.Peek(1); err != nil {
			res <- upgraded{conn: conn, err: fmt.Errorf("peek: %w", err)}
			return
		}
		_, b, err := conn.ReadMessage()
		if err == nil && br.Buffered() != 0 {
			err = fmt.Errorf("%d bytes left in the buffer after the only frame", br.Buffered())
		}
		res <- upgraded{conn: conn, err: err, msg: string(b)}
	}))
	defer ts.Close()

	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("through our buffer")); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.conn != nil {
		defer r.conn.Close()
	}
	if r.err != nil {
		t.Fatalf("gorilla does not read through the session's buffer: %v", r.err)
	}
	if r.msg != "through our buffer" {
		t.Fatalf("read %q", r.msg)
	}
}

// sessionGoroutines counts the goroutines running session code.
func sessionGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "relay.(*session)") {
			n++
		}
	}
	return n
}

// Idle sessions hold no goroutine, and an agent's ping is answered.
func TestIdleSessionsHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("connections are watched with epoll only on Linux")
	}
	// No relay pings during the test: every session is idle at once.
	e := newEnv(t, func(c *Config) { c.PingPeriod = time.Hour })
	pongs := make(chan string, 1)
	var agents []*testAgent
	for i := range 20 {
		tok, err := AddDevice(e.cfg.DataDir, fmt.Sprintf("idle%d", i))
		if err != nil {
			t.Fatal(err)
		}
		a := connect(e, tok, func(c *websocket.Conn) {
			c.SetPongHandler(func(p string) error {
				select {
				case pongs <- p:
				default:
				}
				return nil
			})
		})
		a.send(&protocol.Hello{Agent: "test/1", Board: "mock"})
		nextAs[*protocol.Welcome](a)
		agents = append(agents, a)
	}
	waitFor(t, "no session goroutines while idle", func() bool { return sessionGoroutines() == 0 })

	if err := agents[7].conn.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(waitLimit)); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-pongs:
		if p != "are you there" {
			t.Fatalf("pong %q", p)
		}
	case <-time.After(waitLimit):
		t.Fatal("no pong")
	}
	waitFor(t, "no session goroutines after the ping", func() bool { return sessionGoroutines() == 0 })
}

// Agents that answer the relay's pings (gorilla's default ping handler)
// stay connected across several silence limits. The period leaves a pong
// half a second to arrive: under -race on two busy cores, 125 ms (a 50 ms
// period) was sometimes not enough.
func TestAnsweredPingsKeepSessions(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PingPeriod = 200 * time.Millisecond })
	var agents []*testAgent
	for i := range 5 {
		tok, err := AddDevice(e.cfg.DataDir, fmt.Sprintf("ping%d", i))
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, dialAgent(e, tok))
	}
	time.Sleep(4 * protocol.DeadAfter(e.cfg.PingPeriod))
	for i, a := range agents {
		select {
		case <-a.done:
			t.Fatalf("agent %d was dropped: %v", i, a.err())
		default:
		}
	}
}
