package relay

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Restored describes a data directory Restore made.
type Restored struct {
	Bytes    int64 // of relay.db
	Requests int   // stored requests, finished ones included
	Devices  int   // registered in credentials.json
	Clients  int
}

// Restore unpacks a copy that Backup or BackupDir wrote into dir, which
// must be empty or not exist, and checks it: a store bbolt finds
// consistent, with the relay's buckets, and credentials that parse. The
// files are synced before Restore returns, and given dir's owner when
// root writes them; a copy that fails a check leaves dir empty. A relay started on dir then treats the
// pending requests of the copy as possibly run (see the copy's format).
func Restore(r io.Reader, dir string) (Restored, error) {
	var info Restored
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return info, fmt.Errorf("relay: restore: %w", err)
	}
	if des, err := os.ReadDir(dir); err != nil {
		return info, fmt.Errorf("relay: restore: %w", err)
	} else if len(des) > 0 {
		return info, fmt.Errorf("relay: restore: %s is not empty: restore into a new directory (move the old one aside)", dir)
	}
	var written []string
	seen := make(map[string]bool)
	err := func() error {
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("not a whole copy: %w", err)
			}
			if h.Typeflag != tar.TypeReg || (h.Name != backupDB && h.Name != backupCreds) {
				return fmt.Errorf("not a copy of a relay's data: it holds %q", h.Name)
			}
			if seen[h.Name] {
				return fmt.Errorf("not a copy of a relay's data: %s twice", h.Name)
			}
			seen[h.Name] = true
			path := filepath.Join(dir, h.Name)
			written = append(written, path)
			if err := writeSynced(path, tr); errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("not a whole copy: %s cut short", h.Name)
			} else if err != nil {
				return err
			}
		}
		if !seen[backupDB] {
			return errors.New("not a copy of a relay's data: no relay.db in it")
		}
		var err error
		info, err = checkRestored(dir)
		if err == nil {
			err = syncDir(dir)
		}
		return err
	}()
	if err != nil {
		for _, p := range written {
			os.Remove(p)
		}
		return Restored{}, fmt.Errorf("relay: restore: %w", err)
	}
	return info, nil
}

// writeSynced writes r to a new file at path, made the directory's
// owner's when root writes it, and syncs it.
func writeSynced(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = ownLikeDir(f, filepath.Dir(path))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkRestored checks the unpacked store and credentials in dir and
// counts what they hold.
func checkRestored(dir string) (Restored, error) {
	info, err := checkStore(filepath.Join(dir, backupDB))
	if err != nil {
		return info, err
	}
	b, err := os.ReadFile(filepath.Join(dir, backupCreds))
	if errors.Is(err, os.ErrNotExist) {
		return info, nil
	}
	if err != nil {
		return info, err
	}
	var c credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return info, fmt.Errorf("credentials.json: %w", err)
	}
	info.Devices, info.Clients = len(c.Devices), len(c.Clients)
	return info, nil
}

// checkStore reads every key of the store at path, which bbolt answers
// on a damaged page with a panic, and counts the requests. bbolt's own
// Tx.Check runs on a goroutine of its own, where such a panic could not
// be recovered; here it is, as the error it is.
func checkStore(path string) (info Restored, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("relay.db is damaged: %v", r)
		}
	}()
	// Not read-only: then bbolt reads the freelist now, on this goroutine.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return info, fmt.Errorf("relay.db: %w", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		info.Bytes = tx.Size()
		for _, name := range [][]byte{bucketRequests, bucketDevices, bucketEvents, bucketMeta} {
			b := tx.Bucket(name)
			if b == nil {
				return fmt.Errorf("relay.db is not a relay's store: no %s bucket", name)
			}
			n, err := walkBucket(b)
			if err != nil {
				return fmt.Errorf("relay.db is damaged: %s: %w", name, err)
			}
			if string(name) == string(bucketRequests) {
				info.Requests = n
			}
		}
		return nil
	})
	return info, err
}

// walkBucket reads every key and value of b and the buckets within it,
// and returns how many keys b itself holds.
func walkBucket(b *bolt.Bucket) (int, error) {
	n := 0
	err := b.ForEach(func(k, v []byte) error {
		n++
		if v == nil {
			if sub := b.Bucket(k); sub != nil {
				_, err := walkBucket(sub)
				return err
			}
		}
		return nil
	})
	return n, err
}
