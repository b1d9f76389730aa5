package relay

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tetherhq/tether/protocol"
)

// Bucket layout of relay.db (changes to requests reach it through the
// request log, DIR/wal/; see wal):
//
//	requests: id → rev (8 bytes, big endian) ‖ JSON storedRequest
//	devices:  id → JSON deviceMeta
//	events:   device id → bucket: seq (8 bytes, big endian) → JSON protocol.EventRecord
//	meta:     "open" → present while a relay has the store open
//	          "walseq" → highest request log file number used (8 bytes, big endian)
var (
	bucketRequests = []byte("requests")
	bucketDevices  = []byte("devices")
	bucketEvents   = []byte("events")
	bucketMeta     = []byte("meta")
	keyOpen        = []byte("open")
	keyWALSeq      = []byte("walseq")
)

// storedRequest is a request as persisted: the public record plus what the
// relay needs to rebuild its queues.
type storedRequest struct {
	protocol.Record
	// Seq orders requests by submission; queues are rebuilt in Seq order.
	Seq uint64 `json:"seq"`
	// Deadline is Created + Timeout on the relay's clock.
	Deadline time.Time `json:"deadline"`
	// Rev increases with every change; a commit never replaces a newer
	// revision. It is stored in front of the JSON, not inside it.
	Rev uint64 `json:"-"`
	// CancelAsked is a client's cancel waiting on the device (entry's
	// cancelAsked): kept, so that a restart does not deliver the request
	// again as if nobody had asked.
	CancelAsked bool `json:"cancel_asked,omitempty"`
	// MaybeRan marks a request recovered after a crash, whose delivery
	// may not have been saved (entry's maybeRan): kept, so that a later
	// clean restart, which finds the store clean, still never expires it
	// or cancels it as if it had never been sent.
	MaybeRan bool `json:"maybe_ran,omitempty"`
	// Idem is set for a request submitted with an idempotency key. (A
	// pointer, so that the requests without one, the many, do not carry
	// its fields through every copy.)
	Idem *idemKey `json:"idem,omitempty"`
}

// idemKey is what the relay keeps of a submission's idempotency key.
type idemKey struct {
	// Key is the key, and Owner the client that gave it: a submission by
	// Owner with the same Key gets this request.
	Key   string `json:"key"`
	Owner string `json:"owner,omitempty"`
	// AskedTimeout is the timeout the submission gave (0: the relay's
	// default), which a repeat must give too: the request's Timeout
	// depends on the relay's configuration, which a restart may change.
	AskedTimeout protocol.Duration `json:"asked_timeout,omitempty"`
}

// index is the key under which the hub finds a request by its
// idempotency key, or "" for none. Keys are per client.
func (k *idemKey) index() string {
	if k == nil {
		return ""
	}
	return idemIndex(k.Owner, k.Key)
}

// asked is AskedTimeout, or 0 for no key.
func (k *idemKey) asked() protocol.Duration {
	if k == nil {
		return 0
	}
	return k.AskedTimeout
}

func idemIndex(owner, key string) string {
	if key == "" {
		return ""
	}
	return owner + "\x00" + key
}

// deviceMeta is what the relay remembers about a device between sessions.
type deviceMeta struct {
	LastSeen  time.Time           `json:"last_seen"`
	Agent     string              `json:"agent,omitempty"`
	Board     string              `json:"board,omitempty"`
	Methods   []string            `json:"methods,omitempty"`
	Resources []protocol.Resource `json:"resources,omitempty"`
	Instance  string              `json:"instance,omitempty"` // of the last hello (protocol.Hello)
}

// store is the relay's bbolt database, with the request log in front of
// its requests bucket.
type store struct {
	db *bolt.DB
	// commit group-commits the other writes (see committer); bbolt's
	// Batch is not used, as it delays every commit.
	commit *committer[txFunc]
	// reqs takes every change to a request.
	reqs *wal
	// unclean is set when the last relay on this store did not close it:
	// it crashed or was killed, and writes it made behind its frames
	// (deliveries) may be missing.
	unclean bool
}

// openStore opens the database at path and replays the request log next
// to it (DIR/wal) into it.
func openStore(path string, log *slog.Logger) (*store, error) {
	// The timeout turns a second relay on the same directory into an error
	// instead of a hang.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("relay: open %s: locked by another process, most likely a relay already serving this data directory (stop it first): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("relay: open %s: %w", path, err)
	}
	unclean := false
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRequests, bucketDevices, bucketEvents, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		unclean = meta.Get(keyOpen) != nil
		return meta.Put(keyOpen, []byte{1})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("relay: init %s: %w", path, err)
	}
	reqs, err := openWAL(filepath.Join(filepath.Dir(path), "wal"), db, log)
	if err != nil {
		unmarkOpen(db, unclean)
		db.Close()
		return nil, err
	}
	return &store{db: db, commit: newCommitter(db), reqs: reqs, unclean: unclean}, nil
}

// unmarkOpen clears the mark of an open store that was closed cleanly
// before this open: a start that failed before serving anything must not
// make the next one think the relay crashed, which would treat every
// queued request as possibly run.
func unmarkOpen(db *bolt.DB, wasUnclean bool) {
	if wasUnclean {
		return
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyOpen) })
}

// abandon closes the store without marking it cleanly closed, as a crash
// would leave it (tests).
func (s *store) abandon() {
	s.reqs.abandon()
	s.db.Close()
}

// abandonStart closes a store a relay could not start on, as clean as it
// was found.
func (s *store) abandonStart() {
	s.reqs.abandon()
	unmarkOpen(s.db, s.unclean)
	s.db.Close()
}

// close moves the request log into bbolt, marks the store cleanly closed
// and closes it. Every write must have returned before.
func (s *store) close() error {
	err := s.reqs.close()
	if err == nil {
		err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyOpen) })
	}
	if cerr := s.db.Close(); cerr != nil {
		return fmt.Errorf("relay: close store: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("relay: close store: %w", err)
	}
	return nil
}

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// encodeRequest returns r as stored: its revision, then its JSON, which
// is what json.Marshal gives (see protocol.Record.AppendJSON) and
// decodeRequest reads. The value stays in the request log's table until
// a checkpoint, up to a second, so it is built in a lent buffer and
// copied out at its exact size rather than grown from a guess.
func encodeRequest(r *storedRequest) []byte {
	bp := sendBufs.Get().(*[]byte)
	b := binary.BigEndian.AppendUint64((*bp)[:0], r.Rev)
	b = r.Record.AppendJSON(b)
	b = append(b[:len(b)-1], `,"seq":`...) // the record's object goes on
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"deadline":`...)
	b = protocol.AppendJSONTime(b, r.Deadline)
	if r.CancelAsked {
		b = append(b, `,"cancel_asked":true`...)
	}
	if r.MaybeRan {
		b = append(b, `,"maybe_ran":true`...)
	}
	if k := r.Idem; k != nil {
		b = append(b, `,"idem":{"key":`...)
		b = protocol.AppendJSONString(b, k.Key)
		if k.Owner != "" {
			b = append(b, `,"owner":`...)
			b = protocol.AppendJSONString(b, k.Owner)
		}
		if k.AskedTimeout != 0 {
			b = append(b, `,"asked_timeout":`...)
			b = protocol.AppendJSONDuration(b, time.Duration(k.AskedTimeout))
		}
		b = append(b, '}')
	}
	b = append(b, '}')
	v := bytes.Clone(b)
	*bp = b
	putSendBuf(bp)
	return v
}

func decodeRequest(v []byte) (storedRequest, error) {
	var r storedRequest
	if len(v) < 8 {
		return r, fmt.Errorf("relay: stored request too short")
	}
	if err := json.Unmarshal(v[8:], &r); err != nil {
		return r, fmt.Errorf("relay: decode stored request: %w", err)
	}
	r.Rev = binary.BigEndian.Uint64(v[:8])
	return r, nil
}

// putRequests commits recs durably. A record older than the stored
// revision is skipped (see applyEntries), so commits racing from
// different goroutines cannot go backwards.
func (s *store) putRequests(recs []storedRequest) error {
	if len(recs) == 0 {
		return nil
	}
	if err := s.reqs.commit.do(requestOp(recs)); err != nil {
		return fmt.Errorf("relay: commit requests: %w", err)
	}
	return nil
}

// putRequestsLater is putRequests deferred (committer.later): it returns
// at once, and after gets the outcome.
func (s *store) putRequestsLater(recs []storedRequest, after func(err error)) {
	s.reqs.commit.later(requestOp(recs), after)
}

func requestOp(recs []storedRequest) walOp {
	op := walOp{entries: make([]walEntry, len(recs))}
	for i := range recs {
		op.entries[i] = walEntry{id: recs[i].ID, val: encodeRequest(&recs[i])}
	}
	return op
}

// getRequest returns the stored request id.
func (s *store) getRequest(id string) (storedRequest, error) {
	var (
		r   storedRequest
		err error
	)
	if v, ok := s.reqs.lookup(id); ok {
		if v == nil {
			return r, ErrNotFound
		}
		return decodeRequest(v)
	}
	verr := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRequests).Get([]byte(id))
		if v == nil {
			err = ErrNotFound
			return nil
		}
		r, err = decodeRequest(v)
		return nil
	})
	if verr != nil {
		return r, fmt.Errorf("relay: read request %s: %w", id, verr)
	}
	return r, err
}

// deleteRequests removes finished requests.
func (s *store) deleteRequests(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	op := walOp{entries: make([]walEntry, len(ids))}
	for i, id := range ids {
		op.entries[i] = walEntry{id: id}
	}
	if err := s.reqs.commit.do(op); err != nil {
		return fmt.Errorf("relay: delete requests: %w", err)
	}
	return nil
}

// loadRequests calls fn for every stored request. It reads bbolt only:
// it is for a store just opened, whose log was replayed into it.
func (s *store) loadRequests(fn func(storedRequest)) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRequests).ForEach(func(k, v []byte) error {
			r, err := decodeRequest(v)
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			fn(r)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("relay: load requests: %w", err)
	}
	return nil
}

// putDevice commits a device's metadata.
func (s *store) putDevice(id string, m deviceMeta) error {
	v, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("relay: encode device %s: %w", id, err)
	}
	err = s.commit.do(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).Put([]byte(id), v)
	})
	if err != nil {
		return fmt.Errorf("relay: commit device %s: %w", id, err)
	}
	return nil
}

// loadDevices returns every device's metadata and its last event seq.
func (s *store) loadDevices() (map[string]deviceMeta, map[string]uint64, error) {
	metas := make(map[string]deviceMeta)
	seqs := make(map[string]uint64)
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var m deviceMeta
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("device %s: %w", k, err)
			}
			metas[string(k)] = m
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketEvents).ForEachBucket(func(k []byte) error {
			if last, _ := tx.Bucket(bucketEvents).Bucket(k).Cursor().Last(); len(last) == 8 {
				seqs[string(k)] = binary.BigEndian.Uint64(last)
			}
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("relay: load devices: %w", err)
	}
	return metas, seqs, nil
}

// putEvent commits ev for device and drops events more than kept
// sequence numbers behind it.
func (s *store) putEvent(device string, ev protocol.EventRecord, kept int) error {
	v, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("relay: encode event: %w", err)
	}
	err = s.commit.do(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(device))
		if err != nil {
			return err
		}
		b.FillPercent = appendFill
		if err := b.Put(seqKey(ev.Seq), v); err != nil {
			return err
		}
		if ev.Seq <= uint64(kept) {
			return nil
		}
		// Collect first: deleting under a moving cursor can skip keys.
		cut := ev.Seq - uint64(kept)
		var old [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= cut; k, _ = c.Next() {
			old = append(old, append([]byte(nil), k...))
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("relay: commit event %s/%d: %w", device, ev.Seq, err)
	}
	return nil
}

// events returns up to limit events of device with Seq > after, oldest first.
func (s *store) events(device string, after uint64, limit int) ([]protocol.EventRecord, error) {
	out := []protocol.EventRecord{}
	if after == math.MaxUint64 {
		return out, nil // after+1 would wrap to the first event
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte(device))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var ev protocol.EventRecord
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("event %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("relay: read events of %s: %w", device, err)
	}
	return out, nil
}
