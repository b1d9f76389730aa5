package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/tetherhq/tether/agent"
)

// statusShutdown bounds how long one status request may take; they are
// tiny, so this only guards against a stuck client.
const statusShutdown = 2 * time.Second

// agentStatus is the JSON served at /status (and, in part, /healthz).
type agentStatus struct {
	Version   string  `json:"version"`
	Board     string  `json:"board"`
	Relay     string  `json:"relay"`
	Connected bool    `json:"connected"`
	Running   int     `json:"running"`
	Outbox    int     `json:"outbox"`
	Syncs     uint64  `json:"syncs"`
	Uptime    float64 `json:"uptime_seconds"`
	// Journal is "ok", or why it cannot be written.
	Journal string `json:"journal"`
}

// health is the JSON served at /healthz. Structs rather than map literals
// here: each map literal costs the Pi Zero's binary its own code.
type health struct {
	Status    string `json:"status"`
	Error     string `json:"error,omitempty"`
	Connected bool   `json:"connected"`
}

type statusError struct {
	Error string `json:"error"`
}

// statusServer serves the agent's health and counters on a local address
// (--status-addr), for a supervisor, a container health check or an
// operator with curl. It has no authentication: bind it to loopback.
//
// It answers one request per connection and closes it. net/http's server
// would do the same job, but it (and the HTTP/2 code it brings) adds half
// a megabyte to a binary that must fit a Pi Zero's 6 MiB budget; requests
// are still parsed by net/http's ReadRequest.
type statusServer struct {
	ln       net.Listener
	snapshot func() agentStatus
}

// listenStatus binds addr now, so a taken port fails the start instead of
// being logged later. read is called for every request.
func listenStatus(addr string, read func() agent.Status, base agentStatus) (*statusServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("status address: %w", err)
	}
	started := time.Now()
	snapshot := func() agentStatus {
		st := read()
		s := base
		s.Connected, s.Running, s.Outbox, s.Syncs = st.Connected, st.Running, st.Outbox, st.Syncs
		s.Journal = "ok"
		if st.Journal != nil {
			s.Journal = st.Journal.Error()
		}
		s.Uptime = time.Since(started).Truncate(time.Second).Seconds()
		return s
	}
	return &statusServer{ln: ln, snapshot: snapshot}, nil
}

// Addr is the address actually bound (useful with port 0).
func (s *statusServer) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then closes the listener and returns once
// every connection has been answered or timed out.
func (s *statusServer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(c)
		}()
	}
}

// serve answers one request on c and closes it.
func (s *statusServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(statusShutdown))
	req, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, 8<<10)))
	if err != nil {
		respond(c, false, 400, statusError{"bad request"})
		return
	}
	code, body := s.answer(req)
	respond(c, req.Method == http.MethodHead, code, body)
}

// answer returns the status code and the body of the response to req.
func (s *statusServer) answer(req *http.Request) (int, any) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return 405, statusError{"method not allowed"}
	}
	switch req.URL.Path {
	case "/healthz":
		// 200 while the agent process runs, whether or not the relay is
		// reachable: a network outage is not a reason to restart it. A
		// journal it cannot write is 503: hardware requests are refused
		// until the disk takes writes again (a restart does not help;
		// the agent writes the journal anew by itself once it can).
		st := s.snapshot()
		if st.Journal != "ok" {
			return 503, health{Status: "journal failing", Error: st.Journal, Connected: st.Connected}
		}
		return 200, health{Status: "ok", Connected: st.Connected}
	case "/status":
		return 200, s.snapshot()
	}
	return 404, statusError{"not found"}
}

// respond writes the response: v as JSON, but only the headers in answer
// to a HEAD request.
func respond(w io.Writer, head bool, code int, v any) {
	body, _ := json.Marshal(v)
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		code, statusText(code), len(body)+1)
	if !head {
		b = append(append(b, body...), '\n')
	}
	w.Write(b)
}

// statusText is http.StatusText for the codes the status server answers
// with (TestStatusText holds them to it); net/http's knows every code, in
// 2 KB of code the Pi Zero's binary would carry.
func statusText(code int) string {
	switch code {
	case 200:
		return "OK"
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 503:
		return "Service Unavailable"
	}
	return "" // respond is given no other code
}
