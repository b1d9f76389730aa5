package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

type echoExec struct{}

func (echoExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rotationRelay is an in-process relay with one device; dials counts the
// agent's upgrade attempts.
type rotationRelay struct {
	srv   *relay.Server
	ts    *httptest.Server
	token string
	dials atomic.Int32
}

func startRotationRelay(t *testing.T) *rotationRelay {
	t.Helper()
	return serveRotationRelay(t, &rotationRelay{}, nil)
}

// serveRotationRelay starts r's relay and its server, whose listener wrap
// wraps if set; they are stopped when t ends.
func serveRotationRelay(t *testing.T, r *rotationRelay, wrap func(net.Listener) net.Listener) *rotationRelay {
	t.Helper()
	dir := t.TempDir()
	tok, err := relay.AddDevice(dir, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(relay.Config{DataDir: dir, SweepInterval: 5 * time.Millisecond, PingPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r.srv, r.token = srv, tok
	h := srv.Handler()
	r.ts = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v1/agent" {
			r.dials.Add(1)
		}
		h.ServeHTTP(w, req)
	}))
	if wrap != nil {
		r.ts.Listener = wrap(r.ts.Listener)
	}
	r.ts.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		r.ts.Close()
		srv.Close()
	})
	return r
}

func (r *rotationRelay) url() string { return "ws" + strings.TrimPrefix(r.ts.URL, "http") }

func runTestAgent(t *testing.T, cfg Config) (*Agent, *syncBuf, func()) {
	t.Helper()
	logs := &syncBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	cfg.BackoffInitial, cfg.BackoffMax = 10*time.Millisecond, 100*time.Millisecond
	cfg.ShutdownGrace = 100 * time.Millisecond
	a, err := New(cfg, echoExec{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
			a.Close()
		})
	}
	t.Cleanup(stop)
	return a, logs, stop
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRotationStoresTokenWithoutReconnect(t *testing.T) {
	r := startRotationRelay(t)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(r.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _, stop := runTestAgent(t, Config{Relay: r.url(), Token: r.token, TokenFile: file})
	waitUntil(t, "connect", func() bool { return a.Status().Connected })

	if err := r.srv.RotateDevice("dev1", time.Minute); err != nil {
		t.Fatal(err)
	}
	var stored string
	waitUntil(t, "new token in the token file", func() bool {
		b, _ := os.ReadFile(file)
		stored = strings.TrimSpace(string(b))
		return stored != r.token
	})
	if !strings.HasPrefix(stored, relay.DeviceTokenPrefix) {
		t.Fatalf("token file holds %q", stored)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v", fi.Mode())
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".token.tmp*")); len(leftovers) > 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	if n := r.dials.Load(); n != 1 || !a.Status().Connected {
		t.Fatalf("agent reconnected for the rotation (%d dials)", n)
	}
	// The file is written (and synced) before the agent switches to it.
	waitUntil(t, "agent to use the stored token", func() bool { return a.token.get() == stored })
	if a.token.get() != stored {
		t.Fatal("agent does not use the stored token")
	}

	// A restarted agent starts from the file and gets in with it.
	stop()
	b, _, _ := runTestAgent(t, Config{Relay: r.url(), Token: stored, TokenFile: file})
	waitUntil(t, "restarted agent to connect with the rotated token", func() bool { return b.Status().Connected })
}

// An agent whose token does not come from a token file cannot store a
// new one for its next start: it refuses the rotation, says why, and
// keeps its token.
func TestRotationWithoutTokenFileRefused(t *testing.T) {
	r := startRotationRelay(t)
	a, logs, _ := runTestAgent(t, Config{Relay: r.url(), Token: r.token})
	waitUntil(t, "connect", func() bool { return a.Status().Connected })
	if err := r.srv.RotateDevice("dev1", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "refusal", func() bool { return strings.Contains(logs.String(), "rotation refused") })
	if a.token.get() != r.token {
		t.Fatal("agent switched to a token it cannot present after a restart")
	}
	if r.dials.Load() != 1 {
		t.Fatal("agent reconnected for the rotation")
	}
}

func TestRotationUnwritableFileKeepsOldToken(t *testing.T) {
	r := startRotationRelay(t)
	file := filepath.Join(t.TempDir(), "missing-dir", "token")
	a, logs, _ := runTestAgent(t, Config{Relay: r.url(), Token: r.token, TokenFile: file})
	waitUntil(t, "connect", func() bool { return a.Status().Connected })
	if err := r.srv.RotateDevice("dev1", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "error log", func() bool { return strings.Contains(logs.String(), "new device token not stored") })
	if a.token.get() != r.token {
		t.Fatal("agent switched to a token it could not store")
	}
}
