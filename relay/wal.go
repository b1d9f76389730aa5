package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The request log (DIR/wal/) makes changes to stored requests durable
// with one append and one fdatasync per group commit. Committing them to
// bbolt instead costs a write of every page on the path from the root to
// the changed leaves and two fdatasyncs (data, then meta page): about
// twice the disk time, and a quarter of the relay's CPU under load.
//
// A checkpointer moves what the log holds into bbolt in one transaction
// every walCheckpointEvery (or sooner, once a file passes walRotateSize),
// then keeps the file for reuse. Until then, reads see the changes
// through an in-memory table. At open, the files left by a crash are
// replayed into bbolt before anything reads it.
//
// The same approach (a write-ahead log in front of bbolt, applied in
// batches) is how etcd keeps its commits cheap.
//
// Log files are written once with zeros to walFileSize and then reused:
// the checkpointer renames a file it has emptied into bbolt to the next
// sequence number. Records overwrite the old ones in place, so an
// fdatasync flushes data only, never a change of the file's size or
// extents, and never waits for the filesystem's journal (which bbolt's
// checkpoint keeps busy). Old records left behind fail the checksum,
// which covers the file's sequence number.
const (
	walCheckpointEvery = time.Second
	walFileSize        = 16 << 20
	walRotateSize      = walFileSize - 1<<20
	// walMaxRecord bounds a record's length, so a corrupt length ends the
	// replay of a file instead of allocating gigabytes.
	walMaxRecord = 64 << 20
	walSuffix    = ".wal"
)

// Record kinds.
const (
	walPut    = 1 // id → value (rev ‖ JSON storedRequest), unless older
	walDelete = 2 // id removed
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// walEntry is one change to the requests bucket.
type walEntry struct {
	id  string
	val []byte // rev (8 bytes, big endian) ‖ JSON; nil: deleted
}

func (e walEntry) rev() uint64 {
	if len(e.val) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(e.val[:8])
}

// walOp is what one commit call adds to the log. The zero walOp adds
// nothing.
type walOp struct {
	entries []walEntry
}

// wal is the request log of a store.
type wal struct {
	dir    string
	db     *bolt.DB
	log    *slog.Logger
	commit *committer[walOp]

	kick chan struct{} // a file passed walRotateSize
	stop chan struct{}
	done chan struct{} // the checkpointer returned

	// buf is the leader's encoding buffer, and seed the walSeed of file
	// seedOf; only run touches them.
	buf    []byte
	seed   uint32
	seedOf uint64
	// cpMu serialises checkpoints (the checkpointer's, and tests').
	cpMu sync.Mutex

	mu sync.Mutex
	// Guarded by mu:
	f    *os.File
	seq  uint64 // of f, in its name and in every record's checksum
	size int64  // bytes of f that hold committed records
	// sick is set when a failed write could not be cut off f: nothing
	// more is appended to it, and commits fail until the next rotation.
	sick error
	// mem holds the changes committed since the last rotation; flushing
	// those of the file being checkpointed into bbolt, if any.
	mem, flushing map[string]walEntry
	// next is a file made ready by the checkpointer, taken by the next
	// commit (see rotateLocked); old is the file flushing came from.
	next    *os.File
	nextSeq uint64
	old     *os.File
	oldSeq  uint64

	// spare is a file emptied into bbolt, for prepare to reuse; only
	// checkpoints (and, after them, close) touch it.
	spare    *os.File
	spareSeq uint64
}

// openWAL replays the log files in dir into db, removes them but one,
// which it reuses, and starts the log with its checkpointer.
func openWAL(dir string, db *bolt.DB, log *slog.Logger) (*wal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("relay: request log: %w", err)
	}
	last, spare, err := replayWAL(dir, db)
	if err != nil {
		return nil, err
	}
	w := &wal{
		dir: dir, db: db, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		seq: last + 1, mem: make(map[string]walEntry),
	}
	if spare != 0 {
		if w.spare, err = os.OpenFile(walName(dir, spare), os.O_RDWR, 0); err != nil {
			return nil, fmt.Errorf("relay: request log: %w", err)
		}
		w.spareSeq = spare
	}
	if w.f, err = w.prepare(w.seq); err != nil {
		return nil, err
	}
	w.commit = &committer[walOp]{run: w.run, delay: laterDelay}
	go w.checkpointLoop()
	return w, nil
}

func walName(dir string, seq uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%016x%s", seq, walSuffix))
}

// walFiles returns the sequence numbers of the log files in dir, oldest
// first.
func walFiles(dir string) ([]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("relay: request log: %w", err)
	}
	var seqs []uint64
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), walSuffix)
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(name, 16, 64); err == nil {
			seqs = append(seqs, n)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

// prepare returns log file seq, ready to take records: the spare file
// renamed, or a new one written with zeros to walFileSize. Either way
// its name is durable before it is used, so records fdatasynced into it
// cannot vanish with a lost directory entry.
func (w *wal) prepare(seq uint64) (*os.File, error) {
	w.mu.Lock()
	dir := w.dir
	w.mu.Unlock()
	name := walName(dir, seq)
	f := w.spare
	if f != nil {
		w.spare = nil
		if err := os.Rename(walName(dir, w.spareSeq), name); err != nil {
			f.Close()
			return nil, fmt.Errorf("relay: request log: %w", err)
		}
	} else {
		var err error
		if f, err = os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			return nil, fmt.Errorf("relay: request log: %w", err)
		}
		zeros := make([]byte, 1<<20)
		for off := int64(0); off < walFileSize && err == nil; off += int64(len(zeros)) {
			_, err = f.WriteAt(zeros, off)
		}
		if err == nil {
			err = datasync(f)
		}
		if err != nil {
			f.Close()
			os.Remove(name)
			return nil, fmt.Errorf("relay: request log: %w", err)
		}
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// replayWAL applies the log files in dir that bbolt does not hold yet to
// db, in one transaction, and returns the highest sequence number ever
// used. bbolt keeps, with each checkpoint, the number of the file the log
// had moved on to (keyWALSeq): every file numbered below it was in bbolt
// by then, whatever it still holds (a spare not reused yet), so it is
// skipped. The number also keeps a reused file's old records from ever
// passing for new ones.
//
// Once the files are in bbolt, the mark is set past all of them. One
// file of full size is kept as the spare (its number is returned, 0 if
// none): reusing it saves writing a new one with zeros. The others are
// removed.
func replayWAL(dir string, db *bolt.DB) (last, spare uint64, err error) {
	seqs, err := walFiles(dir)
	if err != nil {
		return 0, 0, err
	}
	var done uint64
	if err := db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyWALSeq); len(v) == 8 {
			done = binary.BigEndian.Uint64(v)
		}
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("relay: request log: %w", err)
	}
	if len(seqs) == 0 {
		return done, 0, nil
	}
	last = max(done, seqs[len(seqs)-1])
	var all []walEntry
	for _, seq := range seqs {
		if seq < done {
			continue
		}
		b, err := os.ReadFile(walName(dir, seq))
		if err != nil {
			return 0, 0, fmt.Errorf("relay: request log: %w", err)
		}
		all = append(all, decodeWAL(b, seq)...)
	}
	last++ // every file is now below the mark
	if err := db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, all, last) }); err != nil {
		return 0, 0, fmt.Errorf("relay: replay request log: %w", err)
	}
	for i := len(seqs) - 1; i >= 0 && spare == 0; i-- {
		if fi, err := os.Stat(walName(dir, seqs[i])); err == nil && fi.Size() >= walFileSize {
			spare = seqs[i]
			seqs = slices.Delete(seqs, i, i+1)
		}
	}
	if err := removeWALFiles(dir, seqs); err != nil {
		return 0, 0, err
	}
	return last, spare, nil
}

func removeWALFiles(dir string, seqs []uint64) error {
	for _, seq := range seqs {
		if err := os.Remove(walName(dir, seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("relay: request log: %w", err)
		}
	}
	// A removal that is not durable could bring back a file whose puts
	// were since deleted from bbolt.
	return syncDir(dir)
}

// Each record is
//
//	length (4 bytes LE) ‖ CRC-32C of (file seq ‖ payload) (4 bytes LE) ‖ payload
//	payload: kind (1) ‖ id length (2, LE) ‖ id ‖ value (rest; puts only)
//
// A file ends at its first record that does not check: a write torn by a
// crash, or the end of the data.
const walHeader = 8

// appendWALRecord appends e's record for the file whose walSeed is seed.
func appendWALRecord(b []byte, seed uint32, e walEntry) []byte {
	kind := byte(walPut)
	if e.val == nil {
		kind = walDelete
	}
	start := len(b)
	b = append(b, make([]byte, walHeader)...)
	b = append(b, kind)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(e.id)))
	b = append(b, e.id...)
	b = append(b, e.val...)
	payload := b[start+walHeader:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Update(seed, crcTable, payload))
	return b
}

// walSeed is the checksum of file seq's number, which every record's
// checksum goes on from.
func walSeed(seq uint64) uint32 {
	return crc32.Checksum(binary.LittleEndian.AppendUint64(nil, seq), crcTable)
}

// decodeWAL returns the records of log file seq up to the first one that
// does not check.
func decodeWAL(b []byte, seq uint64) []walEntry {
	var out []walEntry
	seed := walSeed(seq)
	for len(b) >= walHeader {
		n := binary.LittleEndian.Uint32(b)
		if n < 3 || n > walMaxRecord || int(n) > len(b)-walHeader {
			break
		}
		payload := b[walHeader : walHeader+int(n)]
		if binary.LittleEndian.Uint32(b[4:]) != crc32.Update(seed, crcTable, payload) {
			break
		}
		b = b[walHeader+int(n):]
		kind, idLen := payload[0], int(binary.LittleEndian.Uint16(payload[1:]))
		if 3+idLen > len(payload) {
			break
		}
		e := walEntry{id: string(payload[3 : 3+idLen])}
		switch kind {
		case walPut:
			e.val = append([]byte(nil), payload[3+idLen:]...)
			if len(e.val) < 8 {
				return out
			}
		case walDelete:
		default:
			return out
		}
		out = append(out, e)
	}
	return out
}

// appendFill is how full bbolt packs the leaf pages of a bucket whose new
// keys sort after the old ones: request ids (see newRequestID) and event
// sequence numbers. bbolt splits a page once it is fuller than the
// bucket's FillPercent, 0.5 by default, which suits keys that land
// anywhere; keys that only ever arrive at the right edge would then leave
// every page half empty behind them, twice the pages to write at each
// checkpoint and twice the file. The tenth left free lets a stored
// request grow in place when its result arrives after the checkpoint that
// wrote it.
const appendFill = 0.9

// applyEntries writes entries to the requests bucket in order, and
// records seq as the log file that takes the changes after them. A put never
// replaces a newer revision, so replaying a change twice, or after a
// newer one, is harmless.
//
// One cursor does the lookups and deletes: bbolt's Get and Delete each
// start a cursor of their own, whose stack is allocated anew (Put still
// does), and a checkpoint applies thousands of entries. The keys are
// made in one reused buffer, since Put copies its key.
func applyEntries(tx *bolt.Tx, entries []walEntry, seq uint64) error {
	if err := tx.Bucket(bucketMeta).Put(keyWALSeq, seqKey(seq)); err != nil {
		return err
	}
	b := tx.Bucket(bucketRequests)
	b.FillPercent = appendFill
	c := b.Cursor()
	var key []byte
	for _, e := range entries {
		key = append(key[:0], e.id...)
		k, old := c.Seek(key)
		found := bytes.Equal(k, key)
		if e.val == nil {
			if found {
				if err := c.Delete(); err != nil {
					return err
				}
			}
			continue
		}
		if found && len(old) >= 8 && binary.BigEndian.Uint64(old[:8]) >= e.rev() {
			continue
		}
		if err := b.Put(key, e.val); err != nil {
			return err
		}
	}
	return nil
}

// run is the committer's: it appends the group's records, fdatasyncs,
// and only then shows them to readers.
func (w *wal) run(group []*commitCall[walOp]) {
	w.mu.Lock()
	if w.next != nil {
		w.rotateLocked()
	}
	f, seq, sick := w.f, w.seq, w.sick
	w.mu.Unlock()

	if w.seedOf != seq { // file numbers start at 1
		w.seed, w.seedOf = walSeed(seq), seq
	}
	w.buf = w.buf[:0]
	for _, c := range group {
		for _, e := range c.op.entries {
			w.buf = appendWALRecord(w.buf, w.seed, e)
		}
	}
	err := sick
	if err == nil && len(w.buf) > 0 {
		err = w.append(f, w.buf)
	}

	w.mu.Lock()
	if err == nil {
		w.size += int64(len(w.buf))
		for _, c := range group {
			for _, e := range c.op.entries {
				if old, ok := w.lookupLocked(e.id); ok && e.val != nil && old.val != nil && old.rev() >= e.rev() {
					continue
				}
				w.mem[e.id] = e
			}
		}
	}
	full := w.size >= walRotateSize
	w.mu.Unlock()
	if cap(w.buf) > 1<<20 {
		w.buf = nil // one large burst does not pin its buffer
	}
	if err != nil {
		err = fmt.Errorf("relay: request log: %w", err)
	}
	for _, c := range group {
		c.finish(err)
	}
	if full {
		w.wake()
	}
}

// errMaybeStored marks a failed commit whose records could not be cut off
// the request log: a restart may replay them, so what they record may yet
// happen.
var errMaybeStored = errors.New("the failed records could not be cut off the request log, and a restart may bring them back")

// append writes b after f's committed records and makes it durable.
// After a failure, what f holds past its committed records is unknown,
// so f is marked sick: nothing more is written to it, and the
// checkpointer replaces it at once. Records that reached the file anyway
// would be replayed after a crash, bringing back changes whose callers
// were told they failed (a submission the client then makes again), so
// the failure is made definite by zeroing the header at off, where the
// replay then stops; if that fails too, the error wraps errMaybeStored.
func (w *wal) append(f *os.File, b []byte) error {
	w.mu.Lock()
	off := w.size
	w.mu.Unlock()
	_, err := f.WriteAt(b, off)
	if err == nil {
		err = datasync(f)
	}
	if err != nil {
		w.mu.Lock()
		w.sick = err
		w.mu.Unlock()
		w.wake()
		_, cerr := f.WriteAt(make([]byte, walHeader), off)
		if cerr == nil {
			cerr = datasync(f)
		}
		if cerr != nil {
			err = fmt.Errorf("%w; %w: %v", err, errMaybeStored, cerr)
		}
	}
	return err
}

// rotateLocked makes the file the checkpointer prepared the one commits
// append to, and hands the changes of the old one to the checkpointer.
// It runs at the start of a commit, so no commit straddles two files.
func (w *wal) rotateLocked() {
	w.old, w.oldSeq = w.f, w.seq
	w.f, w.seq = w.next, w.nextSeq
	w.next = nil
	w.size, w.sick = 0, nil
	w.flushing, w.mem = w.mem, make(map[string]walEntry)
}

// lookupLocked returns the latest change to id not yet in bbolt.
func (w *wal) lookupLocked(id string) (walEntry, bool) {
	if e, ok := w.mem[id]; ok {
		return e, true
	}
	e, ok := w.flushing[id]
	return e, ok
}

// lookup returns the latest change to id not yet in bbolt: its value, or
// nil if it was deleted. ok is false when bbolt has the latest.
func (w *wal) lookup(id string) (val []byte, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.lookupLocked(id)
	return e.val, ok
}

func (w *wal) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *wal) checkpointLoop() {
	defer close(w.done)
	t := time.NewTicker(walCheckpointEvery)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		case <-w.kick:
		}
		if err := w.checkpoint(); err != nil {
			w.log.Error("request log checkpoint failed; will retry", "err", err)
		}
	}
}

// checkpoint moves the current file's changes into bbolt: the next file
// is made ready, the next commit switches to it, the old file's changes
// are committed to bbolt, and the old file becomes the spare.
func (w *wal) checkpoint() error {
	w.cpMu.Lock()
	defer w.cpMu.Unlock()
	if err := w.flush(); err != nil {
		return err // an earlier checkpoint's bbolt commit failed: retry it first
	}
	w.mu.Lock()
	idle := len(w.mem) == 0 && w.sick == nil
	seq := w.seq
	w.mu.Unlock()
	if idle {
		return nil
	}
	f, err := w.prepare(seq + 1)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.next, w.nextSeq = f, seq+1
	w.mu.Unlock()
	// The rotation happens at the start of the commit that takes this
	// call, so once it returns the old file's changes are flushing.
	if err := w.commit.do(walOp{}); err != nil {
		return err
	}
	return w.flush()
}

// flush commits the flushing changes to bbolt and keeps their file as
// the spare.
func (w *wal) flush() error {
	w.mu.Lock()
	flushing, old, oldSeq, seq := w.flushing, w.old, w.oldSeq, w.seq
	w.mu.Unlock()
	if flushing == nil {
		return nil
	}
	entries := make([]walEntry, 0, len(flushing))
	for _, e := range flushing {
		entries = append(entries, e)
	}
	// In key order, bbolt's puts walk the tree once, left to right; and
	// ids sort by creation, so new requests land at its right edge.
	slices.SortFunc(entries, func(a, b walEntry) int { return strings.Compare(a.id, b.id) })
	// seq, the file commits go to now, is recorded with the changes: every
	// file numbered below it is then in bbolt (see replayWAL).
	if err := w.db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, entries, seq) }); err != nil {
		return fmt.Errorf("relay: checkpoint request log: %w", err)
	}
	w.mu.Lock()
	w.flushing, w.old = nil, nil
	w.mu.Unlock()
	// The file's records stay valid under its name until prepare renames
	// it, but its number is below the one just recorded: a replay skips it.
	w.spare, w.spareSeq = old, oldSeq
	return nil
}

// close stops the checkpointer and moves every change into bbolt, with
// the mark past every file; then it removes the log files but the one in
// use, which the next open reuses. Every commit must have returned
// before. After a failure the files stay, to be replayed at the next
// open.
func (w *wal) close() error {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	var entries []walEntry
	// flushing's changes go first: mem's are newer.
	for _, m := range []map[string]walEntry{w.flushing, w.mem} {
		for _, e := range m {
			entries = append(entries, e)
		}
	}
	keep := w.seq
	if w.sick != nil {
		keep = 0 // a write failed on it: it is not trusted again
	}
	mark := max(w.seq, w.nextSeq) + 1
	w.mu.Unlock()
	w.closeFiles()
	if err := w.db.Update(func(tx *bolt.Tx) error { return applyEntries(tx, entries, mark) }); err != nil {
		return fmt.Errorf("relay: checkpoint request log: %w", err)
	}
	seqs, err := walFiles(w.dir)
	if err != nil {
		return err
	}
	return removeWALFiles(w.dir, slices.DeleteFunc(seqs, func(s uint64) bool { return s == keep }))
}

// abandon stops the checkpointer and closes the files, leaving them for
// the next open to replay.
func (w *wal) abandon() {
	close(w.stop)
	<-w.done
	w.closeFiles()
}

func (w *wal) closeFiles() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range []*os.File{w.f, w.next, w.old, w.spare} {
		if f != nil {
			f.Close()
		}
	}
}
