package agent

import (
	"encoding/binary"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

// sendUnjournaledEvent runs an agent on dir whose journal write fails: its
// event is still sent, the relay stores and acks it (the ack is not
// journaled either), and the agent stops. It returns the event's seq, the
// relay's last.
func sendUnjournaledEvent(t *testing.T, dir string) uint64 {
	t.Helper()
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
	a.onAck(&protocol.Ack{Events: sent[0]})
	a.Close()
	return sent[0]
}

// An event whose journal write failed is still sent (the event happened),
// and Emit says the journal failed. The journal never held it, so after a
// restart the agent's numbering is behind the relay's; the relay's welcome
// names its last seq, and the next event is numbered above it instead of
// being ignored as one the relay has.
func TestEventSeqNotReusedAfterFailedJournalWrite(t *testing.T) {
	dir := t.TempDir()
	relayLast := sendUnjournaledEvent(t, dir)

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
	relayLast := sendUnjournaledEvent(t, dir)

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
	a, sa := detachedAgent(t, dir, echoExec{})
	a.attach(sa, 0)
	if err := a.Emit("before-restart", nil); err != nil { // journaled as seq 1, sent, not acked
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

// The first welcome's renumbering is one journal record, so a power cut
// in its write leaves all of it or none: recovered events are either all
// under their new seqs or all under their old ones, never some events
// moved and another overwritten by seq.
func TestRenumberingRecordAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	a, s := detachedAgent(t, dir, echoExec{})
	for _, name := range []string{"A", "B", "C"} { // journaled as 1, 2, 3
		if err := a.Emit(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	a.attach(s, 1) // the relay has a 1 already: they move to 2, 3, 4
	var sent []uint64
	waitUntil(t, "the moved events", func() bool {
		sent = append(sent, sentEventSeqs(t, s)...)
		return len(sent) >= 3
	})
	data, err := os.ReadFile(filepath.Join(dir, journalFile)) // as after kill -9
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := decodeRecords(data)
	if n := len(recs); n == 0 || recs[n-1].Op != opEventMove {
		t.Fatalf("journal does not end with the move: %+v", recs)
	}
	end := 0 // of the last event record, where the move starts
	for off := 0; ; {
		rs, _ := decodeRecords(data[off:])
		if len(rs) == 0 || rs[0].Op == opEventMove {
			end = off
			break
		}
		off += recordHead + int(binary.LittleEndian.Uint32(data[off:]))
	}
	whole := map[uint64]string{2: "A", 3: "B", 4: "C"}
	none := map[uint64]string{1: "A", 2: "B", 3: "C"}
	// Cut before the move, inside its head, inside its body, one byte
	// short, and whole (a checksum guards every byte alike).
	for _, cut := range []int{end, end + recordHead/2, (end + len(data)) / 2, len(data) - 1, len(data)} {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, journalFile), data[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		b, _ := detachedAgent(t, d, echoExec{})
		b.mu.Lock()
		got := map[uint64]string{}
		for _, pe := range b.out.events {
			got[pe.ev.Seq] = pe.ev.Name
		}
		b.mu.Unlock()
		b.Close()
		if !maps.Equal(got, whole) && !maps.Equal(got, none) {
			t.Fatalf("journal cut at %d of %d (the move starts at %d): recovered %v, want %v or %v", cut, len(data), end, got, whole, none)
		}
	}
}

// Events an agent made before its first welcome were never sent, even if
// it stopped (or crashed) before having one: the journal says so (they
// follow a boot record no welcome ended), and the next agent's first
// welcome moves them above the relay's last seq like its own. Events an
// agent made after a welcome may have been sent, and are not moved.
func TestEventsOfAnAgentThatNeverConnectedAreMoved(t *testing.T) {
	dir := t.TempDir()
	a, _ := detachedAgent(t, dir, echoExec{})
	for _, name := range []string{"A", "B"} { // 1, 2: a lost state directory's new journal
		if err := a.Emit(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	a.Close() // it never connected
	b, s := detachedAgent(t, dir, echoExec{})
	b.attach(s, 10)
	var got []uint64
	waitUntil(t, "the moved events", func() bool {
		got = append(got, sentEventSeqs(t, s)...)
		return len(got) >= 2
	})
	if !slices.Equal(got, []uint64{11, 12}) {
		t.Fatalf("events of an agent that never connected sent as %v, want [11 12]", got)
	}
	if err := b.Emit("C", nil); err != nil { // after the welcome: 13, sent
		t.Fatal(err)
	}
	b.Close()
	c, sc := detachedAgent(t, dir, echoExec{})
	c.attach(sc, 20) // the relay has more now; nothing was acked
	if got := sentEventSeqs(t, sc); !slices.Equal(got, []uint64{11, 12, 13}) {
		t.Fatalf("after a restart, events that may have been sent were resent as %v, want [11 12 13] (not moved)", got)
	}
}
