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

// An event whose journal write failed is still sent (the event happened),
// and Emit says the journal failed. The journal never held it, so after a
// restart the agent's numbering is behind the relay's; the relay's welcome
// names its last seq, and the next event is numbered above it instead of
// being ignored as one the relay has.
func TestEventSeqNotReusedAfterFailedJournalWrite(t *testing.T) {
	dir := t.TempDir()
	a, s := attachedAgent(t, dir, echoExec{})
	real := breakJournal(t, a.j)
	defer real.Close()

	if err := a.Emit("edge", nil); err == nil {
		t.Fatal("Emit succeeded though the journal could not be written")
	}
	sent := sentEventSeqs(t, s)
	if len(sent) != 1 {
		t.Fatalf("events sent after a failed journal write: %v, want the one event", sent)
	}
	relayLast := sent[0]
	a.onAck(&protocol.Ack{Events: relayLast}) // not journaled either
	a.Close()

	// Restart (the disk has room again); the relay welcomes it with the
	// last seq it stored.
	b, s2 := detachedAgent(t, dir, echoExec{})
	b.attach(s2, relayLast)
	if err := b.Emit("edge", nil); err != nil {
		t.Fatal(err)
	}
	if got := sentEventSeqs(t, s2); len(got) != 1 || got[0] <= relayLast {
		t.Fatalf("event sent with seqs %v after a restart; the relay already stored seq %d and ignores it", got, relayLast)
	}
}

// The same, for an event the board makes before the agent reconnects: it
// is journaled under the seq the relay already has, and the first welcome
// moves it above the relay's last seq before it is sent.
func TestEventEmittedBeforeReconnectAfterFailedJournalWrite(t *testing.T) {
	dir := t.TempDir()
	a, s := attachedAgent(t, dir, echoExec{})
	real := breakJournal(t, a.j)
	defer real.Close()
	if err := a.Emit("edge", nil); err == nil {
		t.Fatal("Emit succeeded though the journal could not be written")
	}
	sent := sentEventSeqs(t, s)
	if len(sent) != 1 {
		t.Fatalf("sent %v", sent)
	}
	relayLast := sent[0] // stored by the relay
	a.onAck(&protocol.Ack{Events: relayLast})
	a.Close()

	// Restart; the board emits before the relay is reachable again.
	b, s2 := detachedAgent(t, dir, echoExec{})
	if err := b.Emit("edge-after-restart", nil); err != nil {
		t.Fatal(err)
	}
	b.attach(s2, relayLast)
	var got []uint64
	waitUntil(t, "the event", func() bool {
		got = append(got, sentEventSeqs(t, s2)...)
		return len(got) > 0
	})
	if len(got) != 1 || got[0] <= relayLast {
		t.Fatalf("event emitted after the restart sent with seqs %v; the relay stored seq %d already and would ignore it", got, relayLast)
	}
}

// An event made after connecting, while events recovered from a journal
// that lags the relay are still owed (their seqs at or below the welcome's
// last_event, so the relay will ignore them), is numbered above
// last_event, not right after them, at the first welcome and at any later
// one: it is stored, not ignored.
func TestEventAfterConnectAboveLastEventWhileOldOnesOwed(t *testing.T) {
	dir := t.TempDir()
	a, _ := detachedAgent(t, dir, echoExec{})
	if err := a.Emit("before-restart", nil); err != nil { // journaled as seq 1
		t.Fatal(err)
	}
	a.Close()
	b, s := detachedAgent(t, dir, echoExec{}) // recovers it, owed
	b.attach(s, 0)                            // a relay that has nothing yet
	b.detach(s)
	b.attach(s, 10) // it has 10 now (another agent on the token, a restored backup)
	if err := b.Emit("after-connect", nil); err != nil {
		t.Fatal(err)
	}
	got := sentEventSeqs(t, s)
	if n := len(got); n < 2 || got[0] != 1 || got[n-1] <= 10 {
		t.Fatalf("sent seqs %v, want the recovered 1 (resent at each welcome) and the new one above 10", got)
	}
}
