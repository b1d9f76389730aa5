package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

func writeJournal(t *testing.T, dir string, recs ...record) []byte {
	t.Helper()
	var buf []byte
	for _, r := range recs {
		buf = appendRecord(buf, r)
	}
	if err := os.WriteFile(filepath.Join(dir, journalFile), buf, 0o600); err != nil {
		t.Fatal(err)
	}
	return buf
}

// decodeFile decodes a journal file and checks that only zeros, written
// ahead, follow its records.
func decodeFile(t *testing.T, data []byte) []record {
	t.Helper()
	recs, good := decodeRecords(data)
	if tail := bytes.TrimRight(data[good:], "\x00"); len(tail) > 0 {
		t.Fatalf("%d bytes after the %d bytes of records are not zeros", len(tail), good)
	}
	return recs
}

func okResult(id string) *protocol.Result {
	return &protocol.Result{ID: id, State: protocol.StateSucceeded, Value: []byte(`{}`)}
}

func TestJournalReplayAndTornTail(t *testing.T) {
	full := appendRecord(nil, record{Op: opStart, ID: "a"})
	full = appendRecord(full, record{Op: opResult, ID: "a", Result: okResult("a")})
	third := appendRecord(nil, record{Op: opStart, ID: "b"})
	for cut := 0; cut < len(third); cut++ {
		t.Run(fmt.Sprint("cut", cut), func(t *testing.T) {
			dir := t.TempDir()
			data := append(append([]byte{}, full...), third[:cut]...)
			os.WriteFile(filepath.Join(dir, journalFile), data, 0o600)
			j, recs, dropped, err := openJournal(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer j.close()
			// The torn bytes are counted, not zeros at their end, which
			// read as the zeros written ahead.
			want := len(bytes.TrimRight(third[:cut], "\x00"))
			if len(recs) != 2 || dropped != want {
				t.Fatalf("got %d records, dropped %d; want 2, %d", len(recs), dropped, want)
			}
			// The torn tail is cleared, so new records follow the good
			// prefix and nothing stale follows them.
			j.wait(j.add(record{Op: opAck, ID: "a"}))
			again, _ := os.ReadFile(filepath.Join(dir, journalFile))
			if got := decodeFile(t, again); len(got) != 3 {
				t.Fatalf("after append: %d records", len(got))
			}
		})
	}
}

func TestJournalCorruptRecordEndsLog(t *testing.T) {
	dir := t.TempDir()
	data := writeJournal(t, dir,
		record{Op: opStart, ID: "a"},
		record{Op: opStart, ID: "b"},
		record{Op: opStart, ID: "c"})
	one := len(appendRecord(nil, record{Op: opStart, ID: "a"}))
	data[one+recordHead+3] ^= 0x40 // flip a bit inside b's payload
	os.WriteFile(filepath.Join(dir, journalFile), data, 0o600)
	j, recs, dropped, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if len(recs) != 1 || recs[0].ID != "a" || dropped != len(data)-one {
		t.Fatalf("got %+v, dropped %d", recs, dropped)
	}
}

func TestJournalGarbageNeverRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, journalFile), []byte("\xff\xff\xff\xffgarbage that is not a journal"), 0o600)
	j, recs, _, err := openJournal(dir)
	if err != nil || len(recs) != 0 {
		t.Fatalf("recs %v err %v", recs, err)
	}
	j.close()
}

// A corrupt length of 2 GiB or more ends the log like any other: on a
// 32-bit board it must not turn into a negative int.
func TestJournalHugeLengthEndsLog(t *testing.T) {
	for _, head := range []string{"\x00\x00\x00\x80", "\xff\xff\xff\x7f", "\xff\xff\xff\xff"} {
		t.Run(fmt.Sprintf("%x", head), func(t *testing.T) {
			dir := t.TempDir()
			good := writeJournal(t, dir, record{Op: opStart, ID: "a"})
			data := append(append([]byte{}, good...), head+"\x00\x00\x00\x00{}"...)
			os.WriteFile(filepath.Join(dir, journalFile), data, 0o600)
			j, recs, dropped, err := openJournal(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer j.close()
			if len(recs) != 1 || recs[0].ID != "a" || dropped != len(data)-len(good) {
				t.Fatalf("got %+v, dropped %d", recs, dropped)
			}
		})
	}
}

func TestJournalConcurrentAppendsGroupCommit(t *testing.T) {
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := j.wait(j.add(record{Op: opStart, ID: fmt.Sprint("r", i)})); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	syncs := j.syncs.Load()
	j.close()
	data, _ := os.ReadFile(filepath.Join(dir, journalFile))
	if recs := decodeFile(t, data); len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	if syncs == 0 || syncs > n {
		t.Fatalf("%d fsyncs for %d concurrent appends", syncs, n)
	}
	t.Logf("%d appends, %d fsyncs", n, syncs)
}

func TestJournalCompaction(t *testing.T) {
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		id := fmt.Sprint("r", i)
		j.add(record{Op: opStart, ID: id}, record{Op: opResult, ID: id, Result: okResult(id)}, record{Op: opAck, ID: id})
	}
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	before := j.fileSize()
	keep := []record{{Op: opResult, ID: "r99", Result: okResult("r99")}}
	if err := j.compact(keep); err != nil {
		t.Fatal(err)
	}
	after := j.fileSize()
	j.wait(j.add(record{Op: opAck, ID: "r99"}))
	j.close()
	if after >= before/10 {
		t.Fatalf("compaction %d → %d bytes", before, after)
	}
	j2, recs, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.close()
	if len(recs) != 2 || recs[0].ID != "r99" || recs[1].Op != opAck {
		t.Fatalf("after compaction: %+v", recs)
	}
}

// A compaction writes the state a chunk at a time: its memory does not
// grow with the state, which at the defaults can be 10,000 remembered
// results of a 4 KiB SPI transfer (80 MB), on a 512 MB board. The file
// written is the state, record for record, and the journal goes on after
// it.
func TestJournalCompactionWritesInChunks(t *testing.T) {
	value := []byte(`{"read":"` + strings.Repeat("a5", 4096) + `"}`)
	var state []record
	for i := 0; i < 500; i++ {
		id := fmt.Sprint("r", i)
		res := &protocol.Result{ID: id, State: protocol.StateSucceeded, Value: value}
		state = append(state, record{Op: opResult, ID: id, Result: res}, record{Op: opAck, ID: id})
	}
	stateBytes := len(appendRecords(nil, state))
	// What encoding the records one at a time allocates anyway: the
	// encoder's own buffers (fresh ones for many records under -race,
	// whose sync.Pool drops some).
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var buf []byte
	encoding := allocated(func() {
		for _, r := range state {
			buf = appendRecord(buf[:0], r)
		}
	})
	for _, tc := range []struct {
		name    string
		compact func(j *journal) error
	}{
		{"at start", func(j *journal) error { return j.compact(state) }},
		{"in the background", func(j *journal) error {
			if !j.startCompaction() {
				t.Fatal("compaction refused")
			}
			_, err := j.finishCompaction(state)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j, _, _, err := openJournal(dir)
			if err != nil {
				t.Fatal(err)
			}
			alloc := allocated(func() { err = tc.compact(j) })
			if err != nil {
				t.Fatal(err)
			}
			if alloc > encoding+uint64(stateBytes)/4 {
				t.Errorf("compacting %d bytes of state allocated %d bytes, %d more than encoding it", stateBytes, alloc, alloc-encoding)
			}
			if j.fileSize() != int64(stateBytes) {
				t.Errorf("journal holds %d bytes of records, want %d", j.fileSize(), stateBytes)
			}
			j.wait(j.add(record{Op: opEventAck, Seq: 1}))
			j.close()
			data, err := os.ReadFile(filepath.Join(dir, journalFile))
			if err != nil {
				t.Fatal(err)
			}
			recs := decodeFile(t, data)
			if len(recs) != len(state)+1 || recs[len(state)-1].ID != state[len(state)-1].ID || recs[len(state)].Op != opEventAck {
				t.Fatalf("after compaction: %d records, want %d", len(recs), len(state)+1)
			}
		})
	}
}

// FuzzJournalRecords checks that replay never panics on arbitrary bytes and
// that the prefix it accepts re-encodes to the same records.
func FuzzJournalRecords(f *testing.F) {
	f.Add(appendRecord(nil, record{Op: opStart, ID: "a", Idem: true, Time: 1}))
	f.Add(appendRecord(appendRecord(nil, record{Op: opResult, ID: "a", Result: okResult("a")}), record{Op: opEventAck, Seq: 3}))
	f.Add([]byte("\x05\x00\x00\x00\x00\x00\x00\x00{}"))
	f.Add([]byte("\x00\x00\x00\x80\x00\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, good := decodeRecords(data)
		if good > len(data) {
			t.Fatalf("good %d > len %d", good, len(data))
		}
		var buf []byte
		for _, r := range recs {
			buf = appendRecord(buf, r)
		}
		again, n := decodeRecords(buf)
		if n != len(buf) || len(again) != len(recs) {
			t.Fatalf("re-encoded %d records, decoded %d", len(recs), len(again))
		}
	})
}

func TestJournalBackgroundCompactionCarriesConcurrentAppends(t *testing.T) {
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		j.add(record{Op: opStart, ID: fmt.Sprint("old", i)})
	}
	if err := j.sync(); err != nil {
		t.Fatal(err)
	}
	if !j.startCompaction() {
		t.Fatal("compaction refused")
	}
	if j.startCompaction() {
		t.Fatal("second compaction started while one runs")
	}
	snapshot := []record{{Op: opResult, ID: "kept", Result: okResult("kept")}}

	// Records added while the snapshot is written, some waited for.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := j.wait(j.add(record{Op: opStart, ID: fmt.Sprint("new", i)})); err != nil {
				t.Error(err)
			}
		}()
	}
	if _, err := j.finishCompaction(snapshot); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	j.wait(j.add(record{Op: opAck, ID: "kept"}))
	j.close()

	j2, recs, dropped, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.close()
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.Op+" "+r.ID] = true
	}
	if dropped != 0 || !ids["result kept"] || !ids["ack kept"] || ids["start old0"] {
		t.Fatalf("after compaction: dropped %d, records %v", dropped, ids)
	}
	for i := 0; i < 50; i++ {
		if !ids[fmt.Sprint("start new", i)] {
			t.Fatalf("record new%d added during compaction was lost", i)
		}
	}
}

// Records overwrite zeros written ahead of them, so a sync finds the
// file's length unchanged, until they pass it and the next chunk of zeros
// is written; a reopened journal finds every record and goes on after the
// last.
func TestJournalWritesAhead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, journalFile)
	j, _, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	length := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	j.wait(j.add(record{Op: opStart, ID: "first"}))
	if l := length(); l != journalChunk {
		t.Fatalf("file length %d after the first record, want %d", l, journalChunk)
	}
	grew := 0
	n := 0
	for j.fileSize() < 2*journalChunk+journalChunk/2 {
		before := length()
		id := fmt.Sprint("r", n)
		if err := j.wait(j.add(record{Op: opResult, ID: id, Result: okResult(id)})); err != nil {
			t.Fatal(err)
		}
		n++
		if after := length(); after != before {
			grew++
			if after%journalChunk != 0 || after <= j.fileSize() {
				t.Fatalf("grew to %d with %d bytes of records", after, j.fileSize())
			}
		}
	}
	if grew != 2 {
		t.Fatalf("the file grew %d times over %d records (%d bytes), want 2", grew, n, j.fileSize())
	}
	size := j.fileSize()
	j.close()

	j2, recs, dropped, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n+1 || dropped != 0 || j2.fileSize() != size {
		t.Fatalf("reopened: %d records, %d dropped, %d bytes; want %d, 0, %d", len(recs), dropped, j2.fileSize(), n+1, size)
	}
	j2.wait(j2.add(record{Op: opAck, ID: "first"}))
	j2.close()
	data, _ := os.ReadFile(path)
	if recs := decodeFile(t, data); len(recs) != n+2 || recs[n+1].Op != opAck {
		t.Fatalf("after reopening and adding one: %d records", len(recs))
	}
}

// A torn write can leave a whole record after the bytes that end the log
// (sectors reach the disk in any order). Opening clears everything after
// the log's end, so a shorter record written over the torn bytes is never
// followed by the stale one.
func TestJournalClearsStaleRecordsAfterTear(t *testing.T) {
	dir := t.TempDir()
	first := appendRecord(nil, record{Op: opStart, ID: "a"})
	next := appendRecord(nil, record{Op: opAck, ID: "a"}) // what is added after reopening
	torn := bytes.Repeat([]byte{0xff}, len(next))         // exactly next's length
	stale := appendRecord(nil, record{Op: opResult, ID: "stale", Result: okResult("stale")})
	data := append(append(append(append([]byte{}, first...), torn...), stale...), make([]byte, 100)...)
	if err := os.WriteFile(filepath.Join(dir, journalFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	j, recs, dropped, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || dropped != len(torn)+len(stale) {
		t.Fatalf("opened: %d records, %d dropped; want 1, %d", len(recs), dropped, len(torn)+len(stale))
	}
	j.wait(j.add(record{Op: opAck, ID: "a"}))
	j.close()
	_, recs, _, err = openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ID == "stale" {
			t.Fatal("a stale record after a torn write came back")
		}
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
}

// A result that fits in a frame fits in a journal record, whatever its
// characters: records are not HTML-escaped, so a value of "<" takes the
// bytes it takes in the frame, and the record reads back.
func TestRecordOfLargestResult(t *testing.T) {
	val := `"` + strings.Repeat("<", protocol.MaxFrame-200) + `"`
	res := &protocol.Result{ID: "r1", State: protocol.StateSucceeded, Value: []byte(val)}
	if n := resultFrameLen(res); n > protocol.MaxFrame {
		t.Fatalf("test result's frame is %d bytes", n)
	}
	buf := appendRecord(nil, record{Op: opResult, ID: "r1", Result: res, Time: 1})
	if len(buf) > maxRecord {
		t.Fatalf("record of %d bytes, over %d", len(buf), maxRecord)
	}
	recs := decodeFile(t, buf)
	if len(recs) != 1 || string(recs[0].Result.Value) != val {
		t.Fatalf("read back %d records", len(recs))
	}
}

// Two agents on one state directory would write one journal over each
// other's records, and each would run requests the other had started:
// the second is refused until the first lets go.
func TestStateDirectoryUsedByOneAgentAtATime(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Relay: "ws://127.0.0.1:1", Token: "t", StateDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a, err := New(cfg, echoExec{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := New(cfg, echoExec{}); !errors.Is(err, ErrStateInUse) {
		if err == nil {
			b.Close()
		}
		t.Fatalf("second agent on the same state directory: %v, want ErrStateInUse", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, echoExec{})
	if err != nil {
		t.Fatalf("state directory still locked after Close: %v", err)
	}
	b.Close()
}
