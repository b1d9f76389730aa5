package relay

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestCommitterGroups checks that concurrent calls all commit, that a
// failing function gets its own error and does not take its group down.
func TestCommitterGroups(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "relay.db"))
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
