package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/agent"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStatusServer(t *testing.T) {
	st := agent.Status{Connected: true, Running: 1, Outbox: 2, Syncs: 3}
	ss, err := listenStatus("127.0.0.1:0", func() agent.Status { return st }, agentStatus{Version: "v9", Board: "mock"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ss.Run(ctx) }()

	get := func(path string, v any) int {
		t.Helper()
		resp, err := http.Get("http://" + ss.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if v != nil {
			if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
		}
		return resp.StatusCode
	}
	var health struct {
		Status    string `json:"status"`
		Connected bool   `json:"connected"`
	}
	if code := get("/healthz", &health); code != 200 || health.Status != "ok" || !health.Connected {
		t.Errorf("/healthz: %d %+v", code, health)
	}
	var got agentStatus
	if code := get("/status", &got); code != 200 {
		t.Errorf("/status: %d", code)
	}
	if got.Version != "v9" || got.Board != "mock" || !got.Connected || got.Running != 1 || got.Outbox != 2 || got.Syncs != 3 {
		t.Errorf("/status: %+v", got)
	}
	if code := get("/nope", nil); code != 404 {
		t.Errorf("/nope: %d", code)
	}
	// A journal that cannot be written shows in both.
	st.Journal = errors.New("write journal: no space left on device")
	var failing struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if code := get("/healthz", &failing); code != 503 || failing.Status != "journal failing" || failing.Error != st.Journal.Error() {
		t.Errorf("/healthz with a failing journal: %d %+v", code, failing)
	}
	if get("/status", &got); got.Journal != st.Journal.Error() {
		t.Errorf("/status journal %q", got.Journal)
	}
	http.DefaultClient.CloseIdleConnections()

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestStatusServerHead checks that HEAD gets GET's status line and headers,
// Content-Length included, and no body.
func TestStatusServerHead(t *testing.T) {
	ss, err := listenStatus("127.0.0.1:0", func() agent.Status { return agent.Status{} }, agentStatus{Version: "v9"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ss.Run(ctx) }()
	raw := func(method string) string {
		t.Helper()
		c, err := net.Dial("tcp", ss.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "%s /healthz HTTP/1.1\r\nHost: x\r\n\r\n", method)
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	get, head := raw("GET"), raw("HEAD")
	i := strings.Index(get, "\r\n\r\n")
	if i < 0 || !strings.HasPrefix(get, "HTTP/1.1 200 OK\r\n") || !strings.Contains(get, "Content-Length: ") {
		t.Fatalf("GET: %q", get)
	}
	if head != get[:i+4] {
		t.Errorf("HEAD: %q, want GET's headers %q", head, get[:i+4])
	}
	if put := raw("PUT"); !strings.HasPrefix(put, "HTTP/1.1 405 Method Not Allowed\r\n") || !strings.HasSuffix(put, "\r\n\r\n{\"error\":\"method not allowed\"}\n") {
		t.Errorf("PUT: %q", put)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestStatusServerTakenAddress(t *testing.T) {
	ss, err := listenStatus("127.0.0.1:0", func() agent.Status { return agent.Status{} }, agentStatus{})
	if err != nil {
		t.Fatal(err)
	}
	defer ss.ln.Close()
	if _, err := listenStatus(ss.Addr(), func() agent.Status { return agent.Status{} }, agentStatus{}); err == nil {
		t.Error("second listen on the same address succeeded")
	}
}

func TestStatusText(t *testing.T) {
	for _, code := range []int{200, 400, 404, 405, 503} {
		if got, want := statusText(code), http.StatusText(code); got != want {
			t.Errorf("statusText(%d) = %q, want %q", code, got, want)
		}
	}
}
