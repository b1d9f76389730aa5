package relay

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tetherhq/tether/protocol"
)

func openTestStore(t *testing.T, dir string) *store {
	t.Helper()
	st, err := openStore(filepath.Join(dir, "relay.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func testRequest(id string, rev uint64, state string) storedRequest {
	return storedRequest{Record: protocol.Record{ID: id, Device: "dev1", Method: "m", State: state}, Rev: rev}
}

func wantState(t *testing.T, st *store, id, state string) {
	t.Helper()
	r, err := st.getRequest(id)
	switch {
	case state == "" && !errors.Is(err, ErrNotFound):
		t.Fatalf("%s: %+v, %v; want it gone", id, r, err)
	case state != "" && err != nil:
		t.Fatalf("%s: %v", id, err)
	case state != "" && r.State != state:
		t.Fatalf("%s is %q, want %q", id, r.State, state)
	}
}

// What the log acknowledged survives a crash (files left, no clean
// close): the next open replays it, newest revision first, deletes
// included. A torn record at the end of the file is ignored.
func TestWALReplayAfterCrash(t *testing.T) {
	dir := t.TempDir()
	st := openTestStore(t, dir)
	must(t, st.putRequests([]storedRequest{testRequest("a", 1, protocol.StateQueued), testRequest("b", 1, protocol.StateQueued)}))
	must(t, st.putRequests([]storedRequest{testRequest("a", 3, protocol.StateSucceeded)}))
	must(t, st.putRequests([]storedRequest{testRequest("a", 2, protocol.StateDelivered)})) // late and older: skipped
	must(t, st.deleteRequests([]string{"b"}))
	wantState(t, st, "a", protocol.StateSucceeded)
	wantState(t, st, "b", "")

	st.reqs.mu.Lock()
	f, size := st.reqs.f, st.reqs.size
	st.reqs.mu.Unlock()
	// Half a record, as a crash in the middle of a write leaves it.
	torn := appendWALRecord(nil, walSeed(st.reqs.seq), walEntry{id: "c", val: []byte("\x00\x00\x00\x00\x00\x00\x00\x09{}")})
	if _, err := f.WriteAt(torn[:len(torn)-3], size); err != nil {
		t.Fatal(err)
	}
	st.abandon()

	st = openTestStore(t, dir)
	defer st.close()
	wantState(t, st, "a", protocol.StateSucceeded)
	wantState(t, st, "b", "")
	wantState(t, st, "c", "")
	var n int
	must(t, st.loadRequests(func(storedRequest) { n++ }))
	if n != 1 {
		t.Fatalf("%d requests in bbolt after the replay, want 1", n)
	}
	if left, _ := walFiles(filepath.Join(dir, "wal")); len(left) != 1 {
		t.Fatalf("log files after the replay: %v, want only the new one", left)
	}
}

// A checkpoint moves the log into bbolt; the file is then reused, and the
// records it still holds from before must not come back after a crash:
// here a request deleted since would reappear.
func TestWALReusedFileOldRecordsIgnored(t *testing.T) {
	dir := t.TempDir()
	st := openTestStore(t, dir)
	// x's record comes first; b's, as long, will overwrite it.
	must(t, st.putRequests([]storedRequest{testRequest("x", 1, protocol.StateQueued)}))
	must(t, st.putRequests([]storedRequest{testRequest("a", 5, protocol.StateSucceeded)}))
	must(t, st.reqs.checkpoint()) // x, a → bbolt; their file becomes the spare
	must(t, st.deleteRequests([]string{"a"}))
	must(t, st.reqs.checkpoint()) // the spare, a's put still in it, is reused
	st.reqs.mu.Lock()
	seq := st.reqs.seq
	st.reqs.mu.Unlock()
	if seq != 3 {
		t.Fatalf("after two checkpoints the log is on file %d, want 3", seq)
	}
	must(t, st.putRequests([]storedRequest{testRequest("b", 1, protocol.StateQueued)}))
	wantState(t, st, "a", "")
	st.abandon()

	st = openTestStore(t, dir)
	defer st.close()
	wantState(t, st, "a", "")
	wantState(t, st, "b", protocol.StateQueued)

	// The file numbers go on from where they were, across restarts, so a
	// reused file never gets a number its old records were written under.
	st.reqs.mu.Lock()
	seq = st.reqs.seq
	st.reqs.mu.Unlock()
	if seq <= 3 {
		t.Fatalf("after a restart the log is on file %d, want > 3", seq)
	}
}

// A file emptied into bbolt is skipped by a replay even if it is still
// there under its own number, as a spare the relay could not reuse would
// be: its put of a request deleted since must not bring it back.
func TestWALCheckpointedFileNotReplayed(t *testing.T) {
	dir := t.TempDir()
	st := openTestStore(t, dir)
	must(t, st.putRequests([]storedRequest{testRequest("a", 5, protocol.StateSucceeded)}))
	must(t, st.reqs.checkpoint()) // a → bbolt; file 1 is the spare
	st.reqs.cpMu.Lock()
	st.reqs.spare.Close()
	st.reqs.spare = nil // lost: file 1 stays on disk, a's put valid in it
	st.reqs.cpMu.Unlock()
	must(t, st.deleteRequests([]string{"a"}))
	must(t, st.reqs.checkpoint()) // file 2 (the delete) → bbolt; file 2 is the spare
	must(t, st.putRequests([]storedRequest{testRequest("b", 1, protocol.StateQueued)}))
	must(t, st.reqs.checkpoint()) // file 2 reused as 4: the delete is gone
	if left, _ := walFiles(filepath.Join(dir, "wal")); len(left) != 3 || left[0] != 1 || left[2] != 4 {
		t.Fatalf("log files %v, want 1 (the lost spare), 3 and 4", left)
	}
	st.abandon()

	st = openTestStore(t, dir)
	defer st.close()
	wantState(t, st, "a", "")
	wantState(t, st, "b", protocol.StateQueued)
}

// A clean close leaves everything in bbolt and no log file.
func TestWALCloseCheckpoints(t *testing.T) {
	dir := t.TempDir()
	st := openTestStore(t, dir)
	must(t, st.putRequests([]storedRequest{testRequest("a", 1, protocol.StateQueued)}))
	must(t, st.deleteRequests([]string{"a"}))
	must(t, st.putRequests([]storedRequest{testRequest("b", 1, protocol.StateQueued)}))
	must(t, st.close())
	wdir := filepath.Join(dir, "wal")
	left, _ := walFiles(wdir)
	if len(left) != 1 {
		t.Fatalf("log files after a clean close: %v, want the one kept for reuse", left)
	}
	kept, err := os.Stat(walName(wdir, left[0]))
	must(t, err)
	st = openTestStore(t, dir)
	if st.unclean {
		t.Fatal("a cleanly closed store opens as unclean")
	}
	var ids []string
	must(t, st.loadRequests(func(r storedRequest) { ids = append(ids, r.ID) }))
	if len(ids) != 1 || ids[0] != "b" {
		t.Fatalf("bbolt holds %v", ids)
	}
	// The kept file is the one in use now, under a new number: no new
	// file was written with zeros.
	st.reqs.mu.Lock()
	seq := st.reqs.seq
	st.reqs.mu.Unlock()
	if seq <= left[0] {
		t.Fatalf("the log reopened at file %d, not past %d", seq, left[0])
	}
	cur, err := os.Stat(walName(wdir, seq))
	must(t, err)
	if !os.SameFile(kept, cur) {
		t.Fatal("the log did not reuse the file kept at close")
	}
	// Its old records (a's put and delete, b's put) are not replayed
	// after a crash: only what was written since.
	must(t, st.putRequests([]storedRequest{testRequest("c", 1, protocol.StateQueued)}))
	st.abandon()
	st = openTestStore(t, dir)
	defer st.close()
	ids = nil
	must(t, st.loadRequests(func(r storedRequest) { ids = append(ids, r.ID) }))
	if !slices.Equal(ids, []string{"b", "c"}) {
		t.Fatalf("after a crash bbolt holds %v, want [b c]", ids)
	}
}

// A failed write marks the file sick: commits fail until the checkpointer
// has moved to a new file, which it does without waiting for its tick.
func TestWALFailedWriteRotates(t *testing.T) {
	st := openTestStore(t, t.TempDir())
	defer st.close()
	real := breakLog(t, st.reqs)
	if err := st.putRequests([]storedRequest{testRequest("a", 1, protocol.StateQueued)}); err == nil {
		t.Fatal("a write to a closed file succeeded")
	}
	real.Close() // what the checkpointer replaces is no longer used
	deadline := time.Now().Add(walCheckpointEvery / 2)
	for st.putRequests([]storedRequest{testRequest("b", 1, protocol.StateQueued)}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("commits still fail: the sick file was not replaced")
		}
		time.Sleep(5 * time.Millisecond)
	}
	wantState(t, st, "a", "")
	wantState(t, st, "b", protocol.StateQueued)
}

// breakLog makes the request log's writes fail, as a failing disk would,
// until the checkpointer replaces its file: the file is swapped for a
// closed one. It returns the file it took out, for the caller to close.
func breakLog(t *testing.T, w *wal) *os.File {
	t.Helper()
	closed, err := os.Create(filepath.Join(t.TempDir(), "closed"))
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	real := w.f
	w.f = closed
	return real
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzWALDecode: a log file's bytes, whatever they are, decode without a
// panic into records that encode back to a prefix of them.
func FuzzWALDecode(f *testing.F) {
	var good []byte
	good = appendWALRecord(good, walSeed(7), walEntry{id: "r_1", val: []byte("\x00\x00\x00\x00\x00\x00\x00\x01{}")})
	good = appendWALRecord(good, walSeed(7), walEntry{id: "r_2"})
	f.Add(good, uint64(7))
	f.Add(good[:len(good)-1], uint64(7))
	f.Add(good, uint64(8))
	f.Add([]byte{}, uint64(0))
	f.Add(make([]byte, 64), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, seq uint64) {
		var again []byte
		for _, e := range decodeWAL(b, seq) {
			again = appendWALRecord(again, walSeed(seq), e)
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("decoded records do not encode back to a prefix of the input")
		}
	})
}

// A stored request reads back as it was written, and its JSON is what
// json.Marshal makes of it.
func TestEncodeRequestRoundTrip(t *testing.T) {
	fin := time.Date(2026, 11, 25, 22, 0, 0, 5, time.UTC)
	r := storedRequest{
		Record: protocol.Record{ID: "r1", Device: "pi", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17"}`),
			State: protocol.StateFailed, Error: &protocol.Failure{Code: "x", Message: "<y>"}, Attempts: 2,
			Timeout: protocol.Duration(time.Second), Created: fin.Add(-time.Second), Finished: &fin, RunMs: 3},
		Seq: 77, Deadline: fin.Add(time.Minute), Rev: 9,
	}
	v := encodeRequest(&r)
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v[8:], want) {
		t.Fatalf("stored JSON\n got %s\nwant %s", v[8:], want)
	}
	back, err := decodeRequest(v)
	if err != nil {
		t.Fatal(err)
	}
	if back.Rev != 9 || back.Seq != 77 || !back.Deadline.Equal(r.Deadline) || back.Error.Message != "<y>" || !back.Finished.Equal(fin) {
		t.Fatalf("read back %+v", back)
	}
}

// applyEntries over a tree of many pages: newer revisions replace older
// ones, older ones and deletes of absent keys change nothing, deletes
// remove, all in one transaction through one cursor, also when one
// transaction changes an id several times.
func TestApplyEntriesManyPages(t *testing.T) {
	st := openTestStore(t, t.TempDir())
	defer st.close()
	val := func(rev uint64, s string) []byte {
		return append(binary.BigEndian.AppendUint64(nil, rev), s...)
	}
	want := map[string][]byte{}
	var first []walEntry
	for i := range 3000 {
		id := fmt.Sprintf("r%05d", i)
		first = append(first, walEntry{id: id, val: val(2, id)})
		want[id] = val(2, id)
	}
	must(t, st.db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, first, 1) }))
	var second []walEntry
	for i := range 3100 {
		id := fmt.Sprintf("r%05d", i)
		switch i % 4 {
		case 0: // newer
			second = append(second, walEntry{id: id, val: val(3, "new")})
			want[id] = val(3, "new")
		case 1: // older: skipped, unless there is none
			second = append(second, walEntry{id: id, val: val(1, "old")})
			if _, ok := want[id]; !ok {
				want[id] = val(1, "old")
			}
		case 2: // deleted, absent or not
			second = append(second, walEntry{id: id})
			delete(want, id)
		}
	}
	must(t, st.db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, second, 2) }))
	// A replay can hold several changes to one id, in order.
	third := []walEntry{
		{id: "r00003", val: val(5, "a")}, {id: "r00003"}, // put, then delete
		{id: "r00002"}, {id: "r00002", val: val(6, "b")}, // delete, then put
		{id: "r00007", val: val(7, "c")}, {id: "r00007", val: val(8, "d")}, {id: "r00007", val: val(4, "old")},
	}
	delete(want, "r00003")
	want["r00002"], want["r00007"] = val(6, "b"), val(8, "d")
	must(t, st.db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, third, 3) }))
	got := map[string][]byte{}
	must(t, st.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRequests).ForEach(func(k, v []byte) error {
			got[string(k)] = bytes.Clone(v)
			return nil
		})
	}))
	if len(got) != len(want) {
		t.Fatalf("%d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Fatalf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// A second relay on the same data directory is told why it cannot open
// the store, not just that the open timed out.
func TestStoreInUse(t *testing.T) {
	dir := t.TempDir()
	st := openTestStore(t, dir)
	defer st.close()
	_, err := openStore(filepath.Join(dir, "relay.db"), slog.New(slog.DiscardHandler))
	if !errors.Is(err, bolt.ErrTimeout) || !strings.Contains(err.Error(), "a relay already serving this data directory") {
		t.Fatalf("second open: %v; want a timeout that names the other relay", err)
	}
}

// Requests checkpointed in the order of their ids, as they are made, fill
// bbolt's leaf pages instead of leaving each half empty.
func TestCheckpointPacksPages(t *testing.T) {
	st := openTestStore(t, t.TempDir())
	defer st.close()
	now := time.Now()
	for range 4 {
		var recs []storedRequest
		for range 1500 {
			now = now.Add(time.Millisecond)
			r := testRequest(newRequestID(now), 1, protocol.StateSucceeded)
			r.Params = json.RawMessage(`{"p":"` + strings.Repeat("x", 64) + `"}`)
			recs = append(recs, r)
		}
		must(t, st.putRequests(recs))
		must(t, st.reqs.checkpoint())
	}
	must(t, st.db.View(func(tx *bolt.Tx) error {
		s := tx.Bucket(bucketRequests).Stats()
		if s.KeyN != 6000 {
			t.Fatalf("%d requests stored, want 6000", s.KeyN)
		}
		if fill := float64(s.LeafInuse) / float64(s.LeafAlloc); fill < 0.8 {
			t.Errorf("leaf pages %.0f%% full (%d of %d bytes), want at least 80%%", 100*fill, s.LeafInuse, s.LeafAlloc)
		}
		return nil
	}))
}
