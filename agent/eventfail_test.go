package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// breakJournal makes the journal's next write fail, as a full or failing
// disk would (ENOSPC, EIO): its file is swapped for one opened read-only.
// It returns the real file, for the caller to close.
func breakJournal(t *testing.T, j *journal) *os.File {
	t.Helper()
	ro, err := os.Open(filepath.Join(j.dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	real := j.f
	j.f = ro
	return real
}

// An event whose journal write failed is reported to the caller as failed
// and not sent. Sent, the relay would store and ack it; the journal never
// held it, so after a restart the agent would number its next event with
// the same seq, and the relay, which ignores (and acks) any event at or
// below the last seq it stored, would drop that new, durable event.
func TestEventNotJournaledIsNotSent(t *testing.T) {
	dir := t.TempDir()
	a, s := attachedAgent(t, dir, echoExec{})
	real := breakJournal(t, a.j)
	defer real.Close()

	emitErr := a.Emit("edge", nil)
	if emitErr == nil {
		t.Fatal("Emit succeeded though the journal could not be written")
	}
	var sent []uint64
	for len(s.out) > 0 {
		m, err := protocol.Decode(<-s.out, protocol.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if ev, ok := m.(*protocol.Event); ok {
			sent = append(sent, ev.Seq)
		}
	}
	// The relay stores what it got and acks it.
	relayLast := uint64(0)
	for _, seq := range sent {
		relayLast = max(relayLast, seq)
	}
	if relayLast > 0 {
		a.onAck(&protocol.Ack{Events: relayLast})
	}
	a.Close()

	// Restart (the disk has room again).
	b, s2 := attachedAgent(t, dir, echoExec{})
	if err := b.Emit("edge", nil); err != nil {
		t.Fatal(err)
	}
	for len(s2.out) > 0 {
		m, err := protocol.Decode(<-s2.out, protocol.MaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if ev, ok := m.(*protocol.Event); ok && ev.Seq <= relayLast {
			t.Fatalf("event sent with seq %d after a restart; the relay already stored seq %d (sent though Emit failed: %v), so it drops this one",
				ev.Seq, relayLast, emitErr)
		}
	}
}
