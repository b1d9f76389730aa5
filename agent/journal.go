package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/tetherhq/tether/protocol"
)

// The journal is the agent's durable memory: an append-only file of
// checksummed records that says which requests were started, how they
// ended, what the relay acknowledged, and which events are still owed.
//
// Record framing: 4-byte little-endian payload length, 4-byte CRC-32C of the
// payload, then the payload (one JSON object). A record that is short, too
// long or fails its checksum ends the log: everything from it on is a torn
// or corrupt tail and is truncated at open. The journal never refuses to
// start.
//
// Writes are group-committed: records are buffered by add, and wait makes
// them durable with one write and one fsync for everything buffered so far,
// however many goroutines are waiting. Records nobody waits for (acks) ride
// along with the next sync; losing one in a crash only means a result is
// sent again, which the relay acknowledges without recording it twice.
//
// The file is compacted by rewriting it with the minimal records for the
// current state (temp file, fsync, rename, fsync of the directory), so its
// size stays bounded by what the agent must remember.
//
// Zeros are written ahead of the records, journalChunk at a time, and
// records then overwrite them in place: a record's sync (fdatasync) finds
// the file's size unchanged and writes the data page alone. An append
// that grows the file makes the filesystem commit its own journal too,
// which on ext4 cost ~40 µs more per sync and ~4 KB more written to the
// device (an SD card's wear), measured on the development VM. A zero
// length ends the log like a torn record, so the zeros need no marker.

const (
	journalFile = "journal"
	// lockFile is locked by the agent that uses the state directory: two
	// agents writing one journal would overwrite each other's records, and
	// each run requests the other has started.
	lockFile = "lock"
	// journalChunk is how far zeros are written ahead of the records.
	journalChunk = 64 << 10
	// maxRecord bounds one record: a result frame plus framing.
	maxRecord   = protocol.MaxFrame + 4096
	recordHead  = 8
	journalPerm = 0o600
)

// Journal operations.
const (
	opStart    = "start"  // request started; hardware may have been touched
	opResult   = "result" // request finished with Result
	opAck      = "ack"    // relay acknowledged the result of ID
	opEvent    = "event"  // event owed to the relay
	opEventAck = "evack"  // relay acknowledged events up to Seq
	// opEventMove moves the events recorded before it with a seq of From
	// or more up by Shift, and acknowledges events up to Seq: the first
	// welcome's renumbering (Agent.renumberFreshLocked), in one record so
	// that a torn write cannot leave half of it. It also ends the span an
	// opBoot began.
	opEventMove = "evmove"
	// opBoot starts the span of a process that has not had a welcome yet:
	// the events recorded in it were never sent (fresh), so the next first
	// welcome may move them.
	opBoot = "boot"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// record is one journal entry.
type record struct {
	Op     string           `json:"op"`
	ID     string           `json:"id,omitempty"`
	Idem   bool             `json:"idem,omitempty"`
	Result *protocol.Result `json:"result,omitempty"`
	Event  *protocol.Event  `json:"event,omitempty"`
	Seq    uint64           `json:"seq,omitempty"`
	From   uint64           `json:"from,omitempty"`  // opEventMove
	Shift  uint64           `json:"shift,omitempty"` // opEventMove
	// Time is the wall clock in Unix milliseconds, used only for the dedupe
	// window; a board without an RTC merely forgets early.
	Time int64 `json:"t,omitempty"`
}

// journal is safe for concurrent use.
type journal struct {
	dir   string
	lock  *os.File      // holds the state directory's lock until close
	syncs atomic.Uint64 // fsyncs done, for tests and status

	mu       sync.Mutex // guards the fields below
	cond     *sync.Cond // signalled when durable, flushing or err change
	f        *os.File
	pending  []byte // encoded records not yet written
	appended uint64 // logical bytes ever added
	durable  uint64 // logical bytes known to be on disk
	flushing bool   // a goroutine is writing and syncing outside mu
	size     int64  // bytes of records in the file: where the next ones go
	alloc    int64  // the file's length: size plus the zeros written ahead
	err      error  // sticky write error
	// carry collects the records added while a background compaction
	// writes its snapshot; they are appended to the new file before it
	// replaces the old one. nil when no compaction runs.
	carry []byte
}

// openJournal opens or creates the journal in dir and returns the records
// that survived, dropping a torn or corrupt tail: it is overwritten with
// zeros, so that no stale bytes after the log's end can ever read as a
// record once shorter ones are written over them. dropped counts its
// bytes, not the zeros after it.
func openJournal(dir string) (j *journal, recs []record, dropped int, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("agent: journal dir: %w", err)
	}
	lock, held, err := lockDir(filepath.Join(dir, lockFile))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("agent: lock state directory: %w", err)
	}
	if held {
		return nil, nil, 0, fmt.Errorf("%w: %s is locked by another tether-agent", ErrStateInUse, dir)
	}
	fail := func(err error) (*journal, []record, int, error) {
		lock.Close()
		return nil, nil, 0, err
	}
	path := filepath.Join(dir, journalFile)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("agent: read journal: %w", err))
	}
	recs, good := decodeRecords(data)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, journalPerm)
	if err != nil {
		return fail(fmt.Errorf("agent: open journal: %w", err))
	}
	torn := len(bytes.TrimRight(data[good:], "\x00"))
	if torn > 0 {
		if _, err := f.WriteAt(make([]byte, torn), int64(good)); err != nil {
			f.Close()
			return fail(fmt.Errorf("agent: clear journal tail: %w", err))
		}
		// Not durable yet, the tail is cleared again at the next open.
		datasync(f)
	}
	j = &journal{dir: dir, lock: lock, f: f, size: int64(good), alloc: int64(len(data))}
	j.cond = sync.NewCond(&j.mu)
	return j, recs, torn, nil
}

// padded is the file length for records ending at end: past it, to the
// next journalChunk boundary.
func padded(end int64) int64 { return (end/journalChunk + 1) * journalChunk }

// writeAhead writes data at off in f, and zeros after it up to padded()
// of its end when that passes alloc, the length f has now. It returns the
// new length. The zeros go a page at a time: written at once, they would
// land in one large page-cache folio where the filesystem uses them (ext4
// on recent kernels), and every later record written into it would dirty,
// and be accounted as writing, the whole folio.
func writeAhead(f *os.File, data []byte, off, alloc int64) (int64, error) {
	if _, err := f.WriteAt(data, off); err != nil {
		return alloc, err
	}
	end := off + int64(len(data))
	if end <= alloc {
		return alloc, nil
	}
	const page = 4096
	zeros := make([]byte, page)
	to := padded(end)
	for at := end; at < to; {
		n := min(page-at%page, to-at)
		if _, err := f.WriteAt(zeros[:n], at); err != nil {
			// The records are written; the end of the file ends the log
			// as zeros do. A full disk costs the speed-up, not the
			// journal: the next write tries again from end.
			return end, nil
		}
		at += n
	}
	return to, nil
}

// decodeRecords parses framed records from data and returns them with the
// length of the valid prefix.
func decodeRecords(data []byte) (recs []record, good int) {
	for {
		rest := data[good:]
		if len(rest) < recordHead {
			return recs, good
		}
		// The length is bounded before it becomes an int: on a 32-bit
		// board a garbage length of 2 GiB or more would be negative.
		size := binary.LittleEndian.Uint32(rest)
		sum := binary.LittleEndian.Uint32(rest[4:])
		if size == 0 || size > maxRecord {
			return recs, good
		}
		n := int(size)
		if len(rest)-recordHead < n {
			return recs, good
		}
		payload := rest[recordHead : recordHead+n]
		if crc32.Checksum(payload, crcTable) != sum {
			return recs, good
		}
		var r record
		if err := json.Unmarshal(payload, &r); err != nil || r.Op == "" {
			return recs, good
		}
		recs = append(recs, r)
		good += recordHead + n
	}
}

// appendRecord appends r, framed, to buf. Its JSON is not HTML-escaped:
// a result's value and message then take the bytes they take in its
// frame, not up to six times as many, and a result that fits in a frame
// fits in a record.
func appendRecord(buf []byte, r record) []byte {
	start := len(buf)
	w := bytes.NewBuffer(append(buf, make([]byte, recordHead)...))
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		// Only a bug in this package can get here: records hold plain data.
		panic(fmt.Sprintf("agent: encode journal record: %v", err))
	}
	buf = w.Bytes()
	buf = buf[:len(buf)-1] // Encode's newline
	payload := buf[start+recordHead:]
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, crcTable))
	return buf
}

// appendRecords appends recs, framed, to buf.
func appendRecords(buf []byte, recs []record) []byte {
	for _, r := range recs {
		buf = appendRecord(buf, r)
	}
	return buf
}

// add buffers records and returns the position wait needs to make them
// durable. It does no I/O.
func (j *journal) add(recs ...record) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	before := len(j.pending)
	j.pending = appendRecords(j.pending, recs)
	if j.carry != nil {
		j.carry = append(j.carry, j.pending[before:]...)
	}
	j.appended += uint64(len(j.pending) - before)
	if j.err != nil {
		// Never written: the rewrite that mends the journal writes the
		// state anew. Kept, they would pile up for as long as the disk
		// stays full.
		j.pending = nil
	}
	return j.appended
}

// wait returns once everything added up to pos is on disk. Whoever finds no
// flush in progress writes and syncs all buffered records for everyone.
func (j *journal) wait(pos uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.durable < pos && j.err == nil {
		if j.flushing {
			j.cond.Wait()
			continue
		}
		j.flushing = true
		buf, target, f, off, alloc := j.pending, j.appended, j.f, j.size, j.alloc
		j.pending = nil
		j.mu.Unlock()
		alloc, err := writeAhead(f, buf, off, alloc)
		if err == nil {
			err = datasync(f)
			j.syncs.Add(1)
		}
		if err == nil {
			err = j.checkLinked(f)
		}
		j.mu.Lock()
		j.flushing = false
		if err != nil {
			j.err = fmt.Errorf("agent: journal write: %w", err)
		} else {
			j.durable = max(j.durable, target)
			j.size += int64(len(buf))
			j.alloc = alloc
		}
		j.cond.Broadcast()
	}
	return j.err
}

// checkLinked reports an error unless f is still the file the journal's
// path names: a journal whose file (or state directory) was removed takes
// writes and syncs without complaint, and loses them all at the next
// start.
func (j *journal) checkLinked(f *os.File) error {
	gone, err := unlinked(f)
	if err == nil && gone {
		err = fmt.Errorf("%s was removed or replaced", filepath.Join(j.dir, journalFile))
	}
	return err
}

// failed returns the error that stopped the journal, nil while it works.
func (j *journal) failed() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// repair replaces a journal whose write failed with recs, which must
// describe the whole state the caller holds, as for compact: the records
// that failed, and those added since, are in it. The file is written
// anew, and the state directory made again if it was removed, so that the
// journal works again once the disk does; if it does not yet, the
// journal's error becomes why. It does nothing while a background
// compaction runs: that one, if it succeeds, is the repair.
func (j *journal) repair(recs []record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.flushing {
		j.cond.Wait()
	}
	if j.err == nil || j.carry != nil {
		return j.err
	}
	err := os.MkdirAll(j.dir, 0o700)
	if err == nil {
		err = j.relockLocked()
	}
	if err == nil {
		err = j.rewriteLocked(recs)
	}
	if err != nil && j.err != nil {
		j.err = fmt.Errorf("agent: journal failed, and could not be written anew: %w", err)
	}
	return j.err
}

// relockLocked takes the state directory's lock again if its lock file
// is no longer the one held (removed with the directory).
func (j *journal) relockLocked() error {
	path := filepath.Join(j.dir, lockFile)
	if fi, err := j.lock.Stat(); err == nil {
		if pi, err := os.Stat(path); err == nil && os.SameFile(fi, pi) {
			return nil
		}
	}
	lock, held, err := lockDir(path)
	if err != nil {
		return err
	}
	if held {
		return fmt.Errorf("%w: %s is locked by another tether-agent", ErrStateInUse, j.dir)
	}
	j.lock.Close()
	j.lock = lock
	return nil
}

// sync makes everything added so far durable.
func (j *journal) sync() error {
	j.mu.Lock()
	pos := j.appended
	j.mu.Unlock()
	return j.wait(pos)
}

// fileSize is the size of the journal's records, without the zeros
// written ahead.
func (j *journal) fileSize() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size
}

// compact replaces the file with recs, which must describe the whole state
// the caller holds, including everything added so far. The caller prevents
// concurrent add calls (the agent holds its lock).
func (j *journal) compact(recs []record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.flushing {
		j.cond.Wait()
	}
	if j.err != nil {
		return j.err
	}
	return j.rewriteLocked(recs)
}

// rewriteLocked replaces the file with recs; see compact.
func (j *journal) rewriteLocked(recs []record) error {
	path := filepath.Join(j.dir, journalFile)
	tmp := path + ".tmp"
	size, alloc, err := writeFileSync(tmp, recs)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp) // on a full disk, the space it took
		return fmt.Errorf("agent: compact journal: %w", err)
	}
	return j.reopenLocked(size, alloc, 2)
}

// reopenLocked makes the rename of a compacted file durable and writes
// on in it from now on: size bytes of records, alloc long, syncs the
// fsyncs its making took. Everything added so far is in it, so an earlier
// write error no longer counts.
func (j *journal) reopenLocked(size, alloc int64, syncs uint64) error {
	path := filepath.Join(j.dir, journalFile)
	if err := syncDir(j.dir); err != nil {
		// Until the rename is durable, records written to the new file
		// could vanish with it: the journal can no longer promise them.
		j.err = fmt.Errorf("agent: compact journal: %w", err)
		return j.err
	}
	f, err := os.OpenFile(path, os.O_RDWR, journalPerm)
	if err != nil {
		j.err = fmt.Errorf("agent: reopen journal: %w", err)
		return j.err
	}
	j.f.Close()
	j.f = f
	j.size, j.alloc = size, alloc
	j.pending = nil
	j.durable = j.appended
	j.err = nil
	j.syncs.Add(syncs)
	j.cond.Broadcast()
	return nil
}

// startCompaction begins a background compaction: from now on added
// records are also carried for the new file. The caller takes its
// snapshot of the state in the same critical section as this call (the
// agent holds its lock), so snapshot plus carried records are the whole
// state. It reports false if a compaction is already running.
func (j *journal) startCompaction() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.carry != nil || j.err != nil {
		return false
	}
	j.carry = []byte{}
	return true
}

// finishCompaction writes snapshot to a new file without holding any lock
// the agent needs, then, briefly under the journal's lock, appends the
// carried records and swaps the file in. On failure the old file stays
// and nothing is lost: every record also went to it.
func (j *journal) finishCompaction(snapshot []record) (live int64, err error) {
	path := filepath.Join(j.dir, journalFile)
	tmp := path + ".tmp"
	var size, alloc int64
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, journalPerm)
	if err == nil {
		if size, alloc, err = writeRecords(f, snapshot); err == nil {
			err = f.Sync()
		}
	}

	j.mu.Lock()
	defer j.mu.Unlock()
	// Wait out a flush to the old file first: cond.Wait lets go of the
	// lock, and records added meanwhile must still land in carry.
	for j.flushing {
		j.cond.Wait()
	}
	carry := j.carry
	j.carry = nil
	if err == nil && len(carry) > 0 {
		if alloc, err = writeAhead(f, carry, size, alloc); err == nil {
			err = datasync(f)
		}
	}
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("agent: compact journal: %w", err)
	}
	// Everything still pending was either in the snapshot (added before
	// it) or carried (added after), so it is in the new file.
	return size, j.reopenLocked(size+int64(len(carry)), alloc, 3)
}

// syncDir makes the entries of dir durable: a rename into it.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFileSync writes a journal file holding recs, with zeros written
// ahead, fsyncs it and returns the size of its records and its length.
func writeFileSync(path string, recs []record) (size, alloc int64, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, journalPerm)
	if err != nil {
		return 0, 0, err
	}
	size, alloc, err = writeRecords(f, recs)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return size, alloc, err
}

// writeRecords writes recs, framed, to the empty file f, with zeros
// written ahead, and returns the size of the records and f's length. The
// records are encoded and written a chunk at a time, never all at once:
// the state of a busy board can be tens of megabytes (10,000 remembered
// results of a 4 KiB SPI transfer are 80 MB of hex), and a buffer of it
// all, grown by doubling on top of the state itself, took a 32-bit agent
// replaying such a journal past 500 MB: more than a Pi Zero has.
func writeRecords(f *os.File, recs []record) (size, alloc int64, err error) {
	var buf []byte
	for _, r := range recs {
		buf = appendRecord(buf, r)
		if len(buf) >= journalChunk {
			if _, err := f.WriteAt(buf, size); err != nil {
				return size, size, err
			}
			size += int64(len(buf))
			buf = buf[:0]
		}
	}
	// The last chunk, and the zeros after it: alloc 0, since the zeros
	// are due whenever any record was written.
	alloc, err = writeAhead(f, buf, size, 0)
	return size + int64(len(buf)), alloc, err
}

// close flushes what is buffered and closes the file.
func (j *journal) close() error {
	err := j.sync()
	j.mu.Lock()
	defer j.mu.Unlock()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	j.lock.Close()
	return err
}
