package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// A keyed submission whose first commit fails with errMaybeStored (the
// record may or may not be on disk) is neither acknowledged to a repeat
// nor delivered to its device before its record is known stored:
// otherwise a crash that loses the record lets the key make the request
// anew, and the action runs twice.
func TestKeyedMaybeStoredNeitherDeliveredNorAcked(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 4})
	hold := make(chan struct{})
	var release sync.Once
	defer release.Do(func() { close(hold) })
	var failing atomic.Bool
	failing.Store(true)
	restore := swapRequestCommits(e.srv.st, func(real func([]*commitCall[walOp]), group []*commitCall[walOp]) {
		if !failing.Load() {
			real(group)
			return
		}
		<-hold
		for _, c := range group {
			c.finish(fmt.Errorf("relay: request log: write: no space left on device; %w: sync: I/O error", errMaybeStored))
		}
	})
	defer restore()
	type answer struct {
		st  int
		rec protocol.Record
		raw string
	}
	first, repeat := make(chan answer, 1), make(chan answer, 1)
	go func() {
		st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"gpio.write"}`)
		first <- answer{st, rec, raw}
	}()
	waitFor(t, "the first submission queued", func() bool { return e.device("dev1").Queued == 1 })
	go func() {
		st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"gpio.write"}`)
		repeat <- answer{st, rec, raw}
	}()
	time.Sleep(50 * time.Millisecond) // the repeat waits for the first commit
	release.Do(func() { close(hold) })
	f, r := <-first, <-repeat
	if f.st != http.StatusInternalServerError {
		t.Fatalf("first: %d %s, want 500 with the request", f.st, f.raw)
	}
	if r.st < 300 {
		t.Errorf("repeat while the first commit failed (maybe stored): %d %s; acknowledged as stored", r.st, r.raw)
	}
	var delivered []string
	select {
	case b := <-a.frames:
		delivered = append(delivered, string(b))
		t.Errorf("delivered before its record is known stored: %s", b)
	case <-time.After(200 * time.Millisecond):
	}

	// The record never reached the disk (nor does any later commit of
	// it: the store is still failing); the relay crashes.
	a.close()
	e.crash()
	st, again, raw := e.submitKeyed(e.key, "k", `{"method":"gpio.write"}`)
	if st >= 300 {
		t.Fatalf("after the crash: %d %s", st, raw)
	}
	a2 := dialAgent(e, e.token)
	a2.send(&protocol.Pull{N: 4})
	req := nextAs[*protocol.Request](a2)
	if len(delivered) > 0 && again.ID != r.rec.ID {
		t.Errorf("key k ran twice: once as %s before the crash, again as %s (%s) after it", r.rec.ID, req.ID, again.ID)
	}
}

// A repeat of the very same submission is not refused as key_reused
// because the relay restarted with another default (or maximum) timeout:
// tether call resubmits exactly so across a restart.
func TestKeyedRetryAcrossDefaultTimeoutChange(t *testing.T) {
	e := newEnv(t)
	_, first, _ := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	e.stop()
	e.cfg.DefaultTimeout = 20 * time.Second
	e.start()
	st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
	if st != http.StatusAccepted || rec.ID != first.ID {
		t.Fatalf("the same submission after a restart with another default timeout: %d %s, want 202 with %s", st, raw, first.ID)
	}
}

// An Idempotency-Key header that holds no key (the empty structured
// string "") is refused, not silently ignored: the client believes its
// retries are safe.
func TestEmptyIdempotencyKeyRefused(t *testing.T) {
	e := newEnv(t)
	st, _, raw := e.submitKeyed(e.key, `""`, `{"method":"m"}`)
	if st != http.StatusBadRequest || apiCode(t, []byte(raw)) != protocol.CodeBadParams {
		t.Fatalf(`Idempotency-Key: "": %d %s, want 400 bad_params`, st, raw)
	}
	if q := e.device("dev1").Queued; q != 0 {
		t.Fatalf("%d queued, want none", q)
	}
}

// A keyed request held back after a maybe-stored first commit goes to its
// device once stored again: by a repeat of its submission, or by the
// sweep; what is queued behind it follows.
func TestKeyedMaybeStoredReleasedOnceStored(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = time.Hour })
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 4})
	for _, byRepeat := range []bool{true, false} {
		restore := swapRequestCommits(e.srv.st, func(real func([]*commitCall[walOp]), group []*commitCall[walOp]) {
			for _, c := range group {
				c.finish(fmt.Errorf("relay: request log: %w", errMaybeStored))
			}
		})
		key := fmt.Sprint("k-", byRepeat)
		st, _, raw := e.submitKeyed(e.key, key, `{"method":"m"}`)
		if st != http.StatusInternalServerError {
			t.Fatalf("first: %d %s", st, raw)
		}
		var held protocol.Record
		if err := json.Unmarshal([]byte(raw), &struct{ Request *protocol.Record }{&held}); err != nil {
			t.Fatal(err)
		}
		restore()
		e.submit(protocol.Submit{Method: "behind"})
		a.quiet(100 * time.Millisecond)
		if byRepeat {
			st, rec, raw := e.submitKeyed(e.key, key, `{"method":"m"}`)
			if st != http.StatusAccepted || rec.ID != held.ID {
				t.Fatalf("repeat once the store mended: %d %s, want 202 with %s", st, raw, held.ID)
			}
		} else {
			e.srv.hub.sweep(time.Now())
		}
		if req := nextAs[*protocol.Request](a); req.ID != held.ID {
			t.Fatalf("delivered %s first, want the held %s", req.ID, held.ID)
		}
		if req := nextAs[*protocol.Request](a); req.Method != "behind" {
			t.Fatalf("delivered %s second", req.Method)
		}
	}
}

// encodeRequest writes what json.Marshal makes of a request, keyed or
// not, also for a request an in-process caller (owner "") made.
func TestEncodeKeyedRequest(t *testing.T) {
	r := storedRequest{
		Record: protocol.Record{ID: "r1", Device: "pi", Method: "m", State: protocol.StateQueued,
			Timeout: protocol.Duration(time.Second), Created: time.Date(2026, 11, 25, 22, 0, 0, 5, time.UTC)},
		Seq: 7, Deadline: time.Date(2026, 11, 25, 22, 0, 1, 5, time.UTC), Rev: 1,
	}
	for _, idem := range []*idemKey{nil, {Key: "k"}, {Key: "k<&>", Owner: "web", AskedTimeout: protocol.Duration(1500 * time.Millisecond)}} {
		r.Idem = idem
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		v := encodeRequest(&r)
		if !bytes.Equal(v[8:], want) {
			t.Errorf("stored JSON\n got %s\nwant %s", v[8:], want)
		}
		back, err := decodeRequest(v)
		if err != nil || (back.Idem == nil) != (idem == nil) || idem != nil && *back.Idem != *idem {
			t.Errorf("read back %+v, %v; want key %+v", back.Idem, err, idem)
		}
	}
}
