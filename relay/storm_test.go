package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
)

// TestReconnectStorm restarts a relay under 2,000 connected agents. The
// agents are real agent.Agent instances (no journal, no hardware), so the
// reconnect path under test, Retry-After included, is the product's own.
// Every agent must be back, and in no one-second window may the relay
// accept more upgrades than its admission rate plus its burst.
func TestReconnectStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("reconnect storm skipped with -short")
	}
	const (
		agents = 2000
		rate   = 400.0
		burst  = 100
	)
	dir := t.TempDir()
	// Register the devices in one write; AddDevice per device would
	// rewrite and fsync the file 2,000 times.
	creds := &credentials{}
	tokens := make([]string, agents)
	for i := range tokens {
		tok, err := newSecret(DeviceTokenPrefix)
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = tok
		creds.Devices = append(creds.Devices, credEntry{Name: fmt.Sprintf("d%04d", i), SHA256: hashSecret(tok), Created: time.Now()})
	}
	if err := writeCredentials(dir, creds); err != nil {
		t.Fatal(err)
	}

	cfg := Config{
		DataDir:         dir,
		AdmitRate:       rate,
		AdmitBurst:      burst,
		PingPeriod:      time.Minute, // keep pings out of the picture
		ShutdownTimeout: 20 * time.Second,
	}
	var mu sync.Mutex
	var accepted []time.Time // upgrades of the relay being measured
	start := func(addr string, measure bool) (string, func()) {
		srv, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if measure {
			hook := func(now time.Time) {
				mu.Lock()
				accepted = append(accepted, now)
				mu.Unlock()
			}
			srv.guard.admit.onAdmit.Store(&hook)
		}
		var ln net.Listener
		for i := 0; i < 100; i++ {
			if ln, err = net.Listen("tcp", addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		return ln.Addr().String(), serveOn(srv, ln)
	}
	addr, stop := start("127.0.0.1:0", false)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	fleet := make([]*agent.Agent, agents)
	for i := range fleet {
		a, err := agent.New(agent.Config{
			Relay:          "ws://" + addr,
			Token:          tokens[i],
			BackoffInitial: 100 * time.Millisecond,
			BackoffMax:     2 * time.Second,
			ShutdownGrace:  100 * time.Millisecond,
			Logger:         slog.New(slog.DiscardHandler),
		}, nopExec{})
		if err != nil {
			t.Fatal(err)
		}
		fleet[i] = a
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Run(ctx)
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	online := func() int {
		n := 0
		for _, a := range fleet {
			if a.Status().Connected {
				n++
			}
		}
		return n
	}
	waitAll := func(what string) time.Duration {
		t0 := time.Now()
		for n := online(); n < agents; n = online() {
			if time.Since(t0) > 90*time.Second {
				t.Fatalf("%s: only %d of %d agents online after %v", what, n, agents, time.Since(t0))
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(t0)
	}
	first := waitAll("first connect")

	stop()
	restarted := time.Now()
	_, stop = start(addr, true)
	defer func() { stop() }()
	back := waitAll("after restart")

	mu.Lock()
	ts := append([]time.Time(nil), accepted...)
	mu.Unlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	// Sliding one-second windows starting at every accepted upgrade.
	most, j := 0, 0
	for i := range ts {
		for j < len(ts) && ts[j].Sub(ts[i]) < time.Second {
			j++
		}
		most = max(most, j-i)
	}
	t.Logf("%d agents: first connect %v; after restart all back in %v (relay restart to last agent %v); %d upgrades accepted, at most %d in any 1 s window (limit %v + %d)",
		agents, first.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond), len(ts), most, rate, burst)
	if len(ts) < agents {
		t.Fatalf("relay accepted %d upgrades for %d agents", len(ts), agents)
	}
	if most > int(rate)+burst {
		t.Fatalf("%d upgrades accepted within one second, above rate %v + burst %d", most, rate, burst)
	}
}
