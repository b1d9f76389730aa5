package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestCommitterGroups checks that concurrent calls all commit, that a
// failing function gets its own error and does not take its group down.
func TestCommitterGroups(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "relay.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range errs {
		wg.Go(func() {
			errs[i] = st.commit.do(func(tx *bolt.Tx) error {
				if i%10 == 3 {
					return boom
				}
				return tx.Bucket(bucketDevices).Put([]byte(fmt.Sprint(i)), []byte("x"))
			})
		})
	}
	wg.Wait()
	st.db.View(func(tx *bolt.Tx) error {
		for i, err := range errs {
			got := tx.Bucket(bucketDevices).Get([]byte(fmt.Sprint(i)))
			if i%10 == 3 {
				if !errors.Is(err, boom) || got != nil {
					t.Errorf("call %d: err %v, stored %q; want boom and nothing stored", i, err, got)
				}
				continue
			}
			if err != nil || string(got) != "x" {
				t.Errorf("call %d: err %v, stored %q", i, err, got)
			}
		}
		return nil
	})
}

// A deferred call rides along with the next commit someone waits for, and
// commits on its own when none comes.
func TestCommitterLater(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "relay.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	g := st.commit
	put := func(key string, txid *int) func(*bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			*txid = tx.ID()
			return tx.Bucket(bucketDevices).Put([]byte(key), []byte("x"))
		}
	}

	g.delay = time.Hour
	var a, b int
	deferred := make(chan error, 1)
	g.later(put("a", &a), func(err error) { deferred <- err })
	if err := g.do(put("b", &b)); err != nil {
		t.Fatal(err)
	}
	// Its outcome comes after the waiter's, from the same transaction.
	select {
	case err := <-deferred:
		if err != nil || a != b {
			t.Fatalf("deferred call: err %v, transaction %d; the waited-for one was %d", err, a, b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the deferred call did not ride along with the next commit")
	}

	g.delay = time.Millisecond
	var c int
	alone := make(chan error, 1)
	g.later(put("c", &c), func(err error) { alone <- err })
	select {
	case err := <-alone:
		if err != nil || c == 0 {
			t.Fatalf("deferred call alone: err %v, transaction %d", err, c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a deferred call alone was never committed")
	}
}
