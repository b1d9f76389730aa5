package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// BenchmarkSubmit measures one durable submit: a bbolt commit (two fsyncs:
// data pages, then the meta page). A lone submit commits at once.
func BenchmarkSubmit(b *testing.B) {
	srv := benchServer(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := srv.Submit(ctx, "dev1", protocol.Submit{Method: "m"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSubmitParallel shows concurrent submits sharing commits through
// the store's group commit.
func BenchmarkSubmitParallel(b *testing.B) {
	srv := benchServer(b)
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := srv.Submit(ctx, "dev1", protocol.Submit{Method: "m"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchServer(b *testing.B) *Server {
	dir := b.TempDir()
	if _, err := AddDevice(dir, "dev1"); err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(dir)
	cfg.QueueLimit = 1 << 30
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return srv
}

// BenchmarkRESTSubmit measures a REST submission, POST
// /v1/devices/{id}/requests answered 202, over one keep-alive connection
// as a web app's backend makes it: authentication, the body's decoding,
// the durable submit and the answer. Its allocations are the client's
// (net/http's ReadResponse) and the relay's together.
func BenchmarkRESTSubmit(b *testing.B) {
	srv := benchServer(b)
	key := benchClient(b, srv)
	body := `{"method":"sys.ping","params":{"seq":1},"timeout":"30s"}`
	benchREST(b, benchHTTP(b, srv), fmt.Sprintf("POST /v1/devices/dev1/requests HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", key, len(body), body), http.StatusAccepted)
}

// BenchmarkRESTSubmitWait is BenchmarkRESTSubmit with ?wait=, answered
// 200 once an agent (a bare WebSocket in the benchmark's process, which
// answers every request at once) has sent the result: one round trip per
// call, as tether-bench's REST figures make them.
func BenchmarkRESTSubmitWait(b *testing.B) {
	srv := benchServer(b)
	key := benchClient(b, srv)
	ts := benchHTTP(b, srv)
	token, err := AddDevice(srv.cfg.DataDir, "dev2")
	if err != nil {
		b.Fatal(err)
	}
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}}
	conn, _, err := d.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/agent", http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		b.Fatal(err)
	}
	send := func(m protocol.Message) error {
		f, err := protocol.Encode(m)
		if err == nil {
			err = conn.WriteMessage(websocket.TextMessage, f)
		}
		return err
	}
	if err := errors.Join(send(&protocol.Hello{Agent: "bench/1", Board: "mock", Methods: []string{"sys.ping"}}), send(&protocol.Pull{N: 1})); err != nil {
		b.Fatal(err)
	}
	agent := make(chan error, 1)
	go func() {
		for {
			_, f, err := conn.ReadMessage()
			if err != nil {
				agent <- err
				return
			}
			if m, err := protocol.Decode(f, 0); err == nil {
				if req, ok := m.(*protocol.Request); ok {
					send(&protocol.Result{ID: req.ID, State: protocol.StateSucceeded, Value: req.Params})
					send(&protocol.Pull{N: 1})
				}
			}
		}
	}()
	defer func() {
		conn.Close()
		<-agent
	}()
	body := `{"method":"sys.ping","params":{"seq":1},"timeout":"30s"}`
	benchREST(b, ts, fmt.Sprintf("POST /v1/devices/dev2/requests?wait=10s HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", key, len(body), body), http.StatusOK)
}

// BenchmarkRESTGet measures GET /v1/requests/{id}?wait=0s of a queued
// request: the REST API's own work on a call, without the store's.
func BenchmarkRESTGet(b *testing.B) {
	srv := benchServer(b)
	key := benchClient(b, srv)
	rec, err := srv.Submit(context.Background(), "dev1", protocol.Submit{Method: "sys.ping", Params: []byte(`{"seq":1}`)})
	if err != nil {
		b.Fatal(err)
	}
	benchREST(b, benchHTTP(b, srv), fmt.Sprintf("GET /v1/requests/%s?wait=0s HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\n\r\n",
		rec.ID, key), http.StatusOK)
}

// benchClient registers a client in srv's data directory and returns its
// key.
func benchClient(b *testing.B, srv *Server) string {
	key, err := AddClient(srv.cfg.DataDir, "web")
	if err != nil {
		b.Fatal(err)
	}
	return key
}

// benchHTTP serves srv's API until b ends.
func benchHTTP(b *testing.B, srv *Server) *httptest.Server {
	ts := httptest.NewServer(srv.Handler())
	b.Cleanup(ts.Close)
	return ts
}

// benchREST sends req to ts over one keep-alive connection for every
// iteration of b, and checks that each answer has status want.
func benchREST(b *testing.B, ts *httptest.Server, req string, want int) {
	c, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			b.Fatalf("status %d, want %d", resp.StatusCode, want)
		}
	}
}
