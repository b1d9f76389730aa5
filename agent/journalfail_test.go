package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// runRequest delivers a request with id to a on s, waits for it to
// finish and returns the result sent for it.
func runRequest(t *testing.T, a *Agent, s *session, id string) *protocol.Result {
	t.Helper()
	a.onRequest(s, &protocol.Request{ID: id, Method: "gpio.write", TimeoutMs: 5000, Attempt: 1})
	timeout, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !a.waitFor(timeout.Done(), func() bool { return len(a.running) == 0 }) {
		t.Fatalf("%s did not finish", id)
	}
	a.jobs.Wait()
	var res *protocol.Result
	for len(s.out) > 0 {
		if r, ok := decodeSent(t, <-s.out).(*protocol.Result); ok && r.ID == id {
			res = r
		}
	}
	if res == nil {
		t.Fatalf("no result sent for %s", id)
	}
	return res
}

// A journal write that fails (a full disk, an I/O error) refuses the
// request whose start it could not record; once the disk takes writes
// again the journal is rewritten from the agent's state and requests run,
// without a restart, and what ran is remembered across one.
func TestJournalFailureIsRepaired(t *testing.T) {
	dir := t.TempDir()
	exec := &countingExec{}
	a, s := attachedAgent(t, dir, exec)

	real := breakJournal(t, a.j)
	defer real.Close()
	if res := runRequest(t, a, s, "r1"); res.State != protocol.StateFailed || exec.calls.Load() != 0 {
		t.Fatalf("r1 with a failing journal: %s, %d runs; want failed, not run", res.State, exec.calls.Load())
	}
	// The disk works again (the file the journal was writing through
	// fails on, as a file that hit an I/O error would).
	if res := runRequest(t, a, s, "r2"); res.State != protocol.StateSucceeded || exec.calls.Load() != 1 {
		t.Fatalf("r2 once the disk works again: %s %v, %d runs; want succeeded, run once", res.State, res.Error, exec.calls.Load())
	}
	a.onAck(&protocol.Ack{IDs: []string{"r1", "r2"}})
	a.Close()

	// Restart: a redelivery of r2 is answered from the journal.
	b, s2 := attachedAgent(t, dir, exec)
	if res := runRequest(t, b, s2, "r2"); res.State != protocol.StateSucceeded || exec.calls.Load() != 1 {
		t.Fatalf("r2 redelivered after a restart: %s, %d runs; want succeeded, run once", res.State, exec.calls.Load())
	}
}

// A state directory removed under a running agent takes the journal's
// writes and syncs without an error, into a file nobody will read: a
// request run then would be forgotten at the next start, and run again
// when redelivered. The agent notices, refuses that request, and makes the
// directory and the journal again for the next.
func TestStateDirectoryRemovedWhileRunning(t *testing.T) {
	dir := t.TempDir()
	exec := &countingExec{}
	a, s := attachedAgent(t, dir, exec)
	if res := runRequest(t, a, s, "r1"); res.State != protocol.StateSucceeded {
		t.Fatalf("r1: %s", res.State)
	}

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if res := runRequest(t, a, s, "r2"); res.State != protocol.StateFailed || exec.calls.Load() != 1 {
		t.Fatalf("r2 after the state directory was removed: %s, %d runs in all; want failed, not run", res.State, exec.calls.Load())
	}
	if res := runRequest(t, a, s, "r3"); res.State != protocol.StateSucceeded || exec.calls.Load() != 2 {
		t.Fatalf("r3: %s %v, %d runs in all; want succeeded, run", res.State, res.Error, exec.calls.Load())
	}
	a.Close()

	// Restart on the directory: r1 and r3 are remembered, not run again.
	b, s2 := attachedAgent(t, dir, exec)
	for _, id := range []string{"r1", "r3"} {
		if res := runRequest(t, b, s2, id); res.State != protocol.StateSucceeded || exec.calls.Load() != 2 {
			t.Fatalf("%s redelivered after a restart: %s, %d runs in all; want succeeded from the journal", id, res.State, exec.calls.Load())
		}
	}
}

// While the journal cannot be written, what is added to it is never
// written: the rewrite that mends it writes the agent's state anew. It is
// not kept meanwhile either, or a board whose disk stayed full for a day
// would hold every refused request's records in memory until it ran out.
func TestFailedJournalKeepsNoBacklog(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "state")
	exec := &countingExec{}
	a, s := attachedAgent(t, dir, exec)

	// A file where the state directory was: the journal, and every
	// rewrite of it, fail until it goes.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		id := fmt.Sprintf("r%d", i)
		if res := runRequest(t, a, s, id); res.State != protocol.StateFailed {
			t.Fatalf("%s with no state directory: %s", id, res.State)
		}
		a.onAck(&protocol.Ack{IDs: []string{id}})
	}
	a.j.mu.Lock()
	backlog := len(a.j.pending)
	a.j.mu.Unlock()
	if backlog > 4096 {
		t.Errorf("%d bytes of records held for a journal that cannot be written", backlog)
	}

	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.repairAt = time.Time{} // a rewrite is tried at most once a second
	a.mu.Unlock()
	if res := runRequest(t, a, s, "ok"); res.State != protocol.StateSucceeded || exec.calls.Load() != 1 {
		t.Fatalf("once the state directory can be made again: %s %v, %d runs; want succeeded, run once", res.State, res.Error, exec.calls.Load())
	}
	a.Close()
	b, s2 := attachedAgent(t, dir, exec)
	if res := runRequest(t, b, s2, "ok"); res.State != protocol.StateSucceeded || exec.calls.Load() != 1 {
		t.Fatalf("redelivered after a restart: %s, %d runs; want answered from the journal", res.State, exec.calls.Load())
	}
}

// A compaction that fails (a full disk, the temporary file in the way)
// leaves the journal working, and is not tried again at every record
// after it: each try takes a snapshot of the whole state under the
// agent's lock and logs an error.
func TestFailedCompactionIsNotRetriedAtEveryRecord(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuf{}
	const compactAt = 4 << 10
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t", StateDir: dir, CompactBytes: compactAt,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}, &countingExec{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s := &session{out: make(chan []byte, 64), done: make(chan struct{}), failed: make(chan struct{})}
	a.attach(s, 0)
	<-s.out // the pull
	// A directory where the compaction writes its file: every rewrite
	// fails, appends do not.
	if err := os.MkdirAll(filepath.Join(dir, journalFile+".tmp", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	const requests = 100 // ~30 KB of records
	for i := range requests {
		id := fmt.Sprintf("r%d", i)
		if res := runRequest(t, a, s, id); res.State != protocol.StateSucceeded {
			t.Fatalf("%s: %s %v", id, res.State, res.Error)
		}
		a.compactions.Wait()
		a.onAck(&protocol.Ack{IDs: []string{id}})
		a.compactions.Wait()
	}
	tries := strings.Count(logs.String(), "journal compaction failed")
	if tries == 0 || tries > 2*int(a.j.fileSize())/compactAt {
		t.Errorf("%d failed compactions for %d requests (%d bytes of journal, compaction at %d)", tries, requests, a.j.fileSize(), compactAt)
	}
}
