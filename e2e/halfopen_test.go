package e2e

import (
	"testing"
	"time"

	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/internal/faultproxy"
	"github.com/tetherhq/tether/protocol"
	"github.com/tetherhq/tether/relay"
)

// TestHalfOpenDetectedOnBothSides black-holes the agent's connection (both
// sockets stay open, nothing passes, no FIN) and measures how long each end
// takes to give the session up. The proxy refuses new connections
// meanwhile, so the agent cannot reconnect and hide the relay's own
// detection behind a session replacement. Both must notice within 2.5 ping
// periods of the link going silent, plus scheduling slack; and not much
// sooner than 1.5 periods, which shows it was the silence they detected.
func TestHalfOpenDetectedOnBothSides(t *testing.T) {
	const (
		ping  = 100 * time.Millisecond
		slack = 150 * time.Millisecond
	)
	dir := t.TempDir()
	tok := addDevice(t, dir, "pi-1")
	key := addClient(t, dir, "app")
	r := startRelay(t, dir, "", func(c *relay.Config) { c.PingPeriod = ping })
	p, err := faultproxy.Listen("127.0.0.1:0", r.addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	cfg := agentConfig("ws://"+p.Addr(), tok)
	cfg.BackoffInitial = 10 * time.Millisecond
	cfg.BackoffMax = 50 * time.Millisecond
	a := startAgent(t, cfg, mockBoard(t, mock.Options{}))
	c := &api{t: t, base: r.url(), key: key}
	relayOnline := func() bool {
		info, err := r.srv.Device("pi-1")
		return err == nil && info.Online
	}

	bound := protocol.DeadAfter(ping) + slack
	for round := 1; round <= 3; round++ {
		eventually(t, 5*time.Second, "device online", relayOnline)
		wantState(t, c.call("pi-1", "sys.ping", round), protocol.StateSucceeded, "")
		// Let a few pings pass so both ends are in their steady state.
		time.Sleep(2 * ping)

		p.Refuse(true)
		start := time.Now()
		if n := p.BlackHole(); n != 1 {
			t.Fatalf("round %d: black-holed %d links, want 1", round, n)
		}
		var relayGone, agentGone time.Duration
		for relayGone == 0 || agentGone == 0 {
			el := time.Since(start)
			if relayGone == 0 && !relayOnline() {
				relayGone = el
			}
			if agentGone == 0 && !a.a.Status().Connected {
				agentGone = el
			}
			if el > 5*time.Second {
				t.Fatalf("round %d: half-open link not detected after %v (relay %v, agent %v)", round, el, relayGone, agentGone)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("round %d: ping %v, relay dropped the session after %v, agent after %v (bound %v)",
			round, ping, relayGone.Round(time.Millisecond), agentGone.Round(time.Millisecond), bound)
		for who, d := range map[string]time.Duration{"relay": relayGone, "agent": agentGone} {
			if d > bound {
				t.Errorf("round %d: %s took %v to detect the half-open link, want <= 2.5 pings + %v = %v", round, who, d, slack, bound)
			}
			if d < 3*ping/2 {
				t.Errorf("round %d: %s dropped the link after only %v: not a silence timeout", round, who, d)
			}
		}
		// With the path open again the agent reconnects by itself.
		p.Refuse(false)
		eventually(t, 5*time.Second, "agent reconnected", func() bool { return a.a.Status().Connected && relayOnline() })
	}
}
