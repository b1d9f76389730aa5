package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

type stubExec struct{}

func (stubExec) Execute(context.Context, *protocol.Request) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startConfiguredAgent resolves the configuration as tether-agent does (file,
// environment, flags) and runs the agent until stop is called.
func startConfiguredAgent(t *testing.T, args []string, env map[string]string) (a *agent.Agent, logs *syncBuf, stop func()) {
	t.Helper()
	cfg, err := loadConfig(args, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncBuf{}
	acfg, err := cfg.agentConfig(slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	acfg.BackoffInitial, acfg.BackoffMax, acfg.ShutdownGrace = 10*time.Millisecond, 50*time.Millisecond, 100*time.Millisecond
	a, err = agent.New(acfg, stubExec{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	stop = sync.OnceFunc(func() { cancel(); <-done; a.Close() })
	t.Cleanup(stop)
	return a, logs, stop
}

func waitCond(t *testing.T, what string, limit time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// The packaged agent.yaml sets token_file: /etc/tether/token, and says to
// put TETHER_* overrides in /etc/default/tether-agent. With TETHER_TOKEN
// set there (the same token as in the file), the environment wins, and
// the board's next start would present that token whatever a rotation
// stored. So the agent refuses the rotation (it never confirms), and the
// relay keeps its token valid: after a restart, and past the grace period
// a confirmation would have started, it still connects.
func TestRotationWithTokenFromEnvironmentDoesNotLockOut(t *testing.T) {
	dir := t.TempDir()
	tok, err := relay.AddDevice(dir, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	const grace = 300 * time.Millisecond
	srv, err := relay.New(relay.Config{DataDir: dir, SweepInterval: 5 * time.Millisecond, PingPeriod: time.Second, RotateGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone; ts.Close(); srv.Close() })

	etc := t.TempDir()
	tokenFile := filepath.Join(etc, "token")
	if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(etc, "agent.yaml")
	url := "ws" + strings.TrimPrefix(ts.URL, "http")
	if err := os.WriteFile(conf, []byte("relay: "+url+"\ntoken_file: "+tokenFile+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", conf}
	env := map[string]string{"TETHER_TOKEN": tok}

	a, alogs, stop := startConfiguredAgent(t, args, env)
	if !waitCond(t, "connect", 5*time.Second, func() bool { return a.Status().Connected }) {
		t.Fatal("agent did not connect")
	}
	if err := srv.RotateDevice("dev1", 0); err != nil {
		t.Fatal(err)
	}
	if !waitCond(t, "refusal", 5*time.Second, func() bool { return strings.Contains(alogs.String(), "rotation refused") }) {
		t.Fatalf("the agent did not refuse the rotation; log:\n%s", tail(alogs.String(), 3))
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "credentials.json")); strings.Contains(string(b), `"prev_sha256"`) {
		t.Fatal("the relay recorded the rotation as confirmed")
	}

	// The board restarts (same unit, same /etc/default/tether-agent).
	stop()
	b2, logs, _ := startConfiguredAgent(t, args, env)
	time.Sleep(grace + 200*time.Millisecond)
	if !waitCond(t, "reconnect after the grace period", 2*time.Second, func() bool { return b2.Status().Connected }) {
		t.Fatalf("device locked out after a confirmed rotation and a restart; agent log tail:\n%s", tail(logs.String(), 3))
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
