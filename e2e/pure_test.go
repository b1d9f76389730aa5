package e2e

import (
	"testing"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/protocol"
)

// sys.ping and sys.info touch no hardware: the agent answers them without
// journaling (no fsync), while a hardware action is journaled before and
// after it runs.
func TestPureMethodsSkipTheJournal(t *testing.T) {
	_, c, a := setup(t, mock.Options{}, func(cfg *agent.Config) { cfg.StateDir = t.TempDir() })
	// Let the start-up writes (compaction at open) finish first.
	c.call("pi-1", "sys.ping", map[string]any{"warm": 1})
	before := a.a.Status().Syncs
	for i := 0; i < 20; i++ {
		wantState(t, c.call("pi-1", "sys.ping", map[string]any{"n": i}), protocol.StateSucceeded, "")
	}
	wantState(t, c.call("pi-1", "sys.info", nil), protocol.StateSucceeded, "")
	if got := a.a.Status().Syncs; got != before {
		t.Fatalf("21 pure requests cost %d journal syncs, want 0", got-before)
	}
	wantState(t, c.call("pi-1", "gpio.write", map[string]any{"pin": "GPIO17", "level": "high"}), protocol.StateSucceeded, "")
	if got := a.a.Status().Syncs - before; got < 2 {
		t.Fatalf("a gpio.write cost %d journal syncs, want 2 (started, result)", got)
	}
}
