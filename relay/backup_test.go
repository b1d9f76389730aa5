package relay

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

// unpackBackup unpacks a copy into a new directory and returns it.
func unpackBackup(t *testing.T, b []byte) string {
	t.Helper()
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatalf("backup is not a tar stream: %v", err)
		}
		if h.Name != backupDB && h.Name != backupCreds {
			t.Fatalf("unexpected file %q in the backup", h.Name)
		}
		f, err := os.OpenFile(filepath.Join(dir, h.Name), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// A copy taken while the relay serves is a data directory a relay starts
// on with every request, key and credential it had: finished requests
// with their results, running and queued ones pending again (possibly
// run, as after a crash), and nothing submitted after the copy.
func TestBackupRestoresTheRelay(t *testing.T) {
	e := newEnv(t)
	a, done := deliveredRequest(e)
	a.succeed(done.ID, `"pong"`)
	a.send(&protocol.Pull{N: 1})
	running := e.submit(protocol.Submit{Method: "m"})
	nextAs[*protocol.Request](a)
	queued := e.submit(protocol.Submit{Method: "m"})
	hdr := http.Header{"Idempotency-Key": {"k-1"}}
	code, body := e.doAs(e.key, hdr, "POST", "/v1/devices/dev1/requests", protocol.Submit{Method: "m"})
	if code != http.StatusAccepted {
		t.Fatalf("keyed submit: %d %s", code, body)
	}
	keyed := decode[protocol.Record](t, body)

	var buf bytes.Buffer
	if err := e.srv.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	after := e.submit(protocol.Submit{Method: "m"})
	a.close()

	r := &env{t: t, cfg: testConfig(unpackBackup(t, buf.Bytes())), key: e.key, token: e.token}
	r.start()
	t.Cleanup(r.stop)
	if got := r.record(done.ID, ""); got.State != protocol.StateSucceeded || string(got.Result) != `"pong"` {
		t.Errorf("finished request restored as %s %s", got.State, got.Result)
	}
	for _, id := range []string{running.ID, queued.ID, keyed.ID} {
		if got := r.record(id, ""); got.State != protocol.StateQueued {
			t.Errorf("pending request %s restored as %s", id, got.State)
		}
		r.srv.hub.mu.Lock()
		maybeRan := r.srv.hub.live[id] != nil && r.srv.hub.live[id].maybeRan
		r.srv.hub.mu.Unlock()
		if !maybeRan {
			t.Errorf("pending request %s restored without the mark that it may have run", id)
		}
	}
	if code, body := r.do("GET", "/v1/requests/"+after.ID, nil); code != http.StatusNotFound {
		t.Errorf("request submitted after the copy: %d %s, want 404", code, body)
	}
	code, body = r.doAs(r.key, hdr, "POST", "/v1/devices/dev1/requests", protocol.Submit{Method: "m"})
	if got := decode[protocol.Record](t, body); code != http.StatusAccepted || got.ID != keyed.ID {
		t.Errorf("keyed repeat after the restore: %d %s, want the request %s", code, body, keyed.ID)
	}
	// The device's token is in the copy too.
	b := dialAgent(r, r.token)
	b.send(&protocol.Pull{N: 3})
	for range 3 {
		nextAs[*protocol.Request](b)
	}
	b.close()
}

// Copies taken while clients submit are each consistent: a store bbolt
// checks clean, holding every request acknowledged before the copy began.
func TestBackupDuringLoad(t *testing.T) {
	e := newEnv(t)
	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body := e.do("POST", "/v1/devices/dev1/requests", protocol.Submit{Method: "m", Params: []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))})
				if code != http.StatusAccepted {
					t.Errorf("submit: %d %s", code, body)
					return
				}
				mu.Lock()
				acked = append(acked, decode[protocol.Record](t, body).ID)
				mu.Unlock()
			}
		}()
	}
	for range 3 {
		waitFor(t, "more submits", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 50 })
		mu.Lock()
		before := append([]string(nil), acked...)
		mu.Unlock()
		var buf bytes.Buffer
		if err := e.srv.Backup(context.Background(), &buf); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(filepath.Join(unpackBackup(t, buf.Bytes()), backupDB), 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			reqs := tx.Bucket(bucketRequests)
			for _, id := range before {
				if reqs.Get([]byte(id)) == nil {
					return fmt.Errorf("request %s, acknowledged before the copy, is not in it", id)
				}
			}
			return nil
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// A stopping relay refuses a copy instead of taking one from a closing
// store.
func TestBackupRefusedOnceStopping(t *testing.T) {
	e := newEnv(t)
	srv := e.srv
	e.stop()
	if err := srv.Backup(context.Background(), io.Discard); !errors.Is(err, ErrStopping) {
		t.Fatalf("backup of a closed relay: %v, want ErrStopping", err)
	}
}

// BackupDir copies a directory no relay serves, the request log a killed
// relay left replayed into it first.
func TestBackupDirAfterACrash(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m"})
	dir := e.cfg.DataDir
	e.stopRun()
	<-e.runDone
	e.ts.Close()
	e.srv.st.abandon() // the submit is in the request log only
	e.srv.creds.close()
	e.srv = nil

	var buf bytes.Buffer
	if err := BackupDir(context.Background(), dir, &buf); err != nil {
		t.Fatal(err)
	}
	r := &env{t: t, cfg: testConfig(unpackBackup(t, buf.Bytes())), key: e.key, token: e.token}
	r.start()
	t.Cleanup(r.stop)
	if got := r.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Errorf("request restored as %s", got.State)
	}
	if err := BackupDir(context.Background(), t.TempDir(), io.Discard); err == nil {
		t.Error("backup of a directory without relay data succeeded")
	}
}

// stallWriter takes a copy's bytes until the store's part begins, then
// blocks until released, like a reader that stopped reading.
type stallWriter struct {
	inDB    bool
	once    sync.Once
	stalled chan struct{}
	release chan struct{}
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.inDB {
		w.once.Do(func() { close(w.stalled) })
		<-w.release
		return len(p), nil
	}
	w.inDB = bytes.Contains(p, []byte(backupDB))
	return len(p), nil
}

// A copy whose reader stops reading (a stalled ssh, a stopped pipe) holds
// up nothing: the store grows and is read as before.
func TestBackupStalledReaderHoldsNothingUp(t *testing.T) {
	e := newEnv(t)
	w := &stallWriter{stalled: make(chan struct{}), release: make(chan struct{})}
	copied := make(chan error, 1)
	go func() { copied <- e.srv.Backup(context.Background(), w) }()
	<-w.stalled

	// Megabytes of requests moved into relay.db: bbolt grows its file.
	big := fmt.Sprintf(`{"x":%q}`, bytes.Repeat([]byte("a"), 30_000))
	for range 200 {
		e.submit(protocol.Submit{Method: "m", Params: []byte(big)})
	}
	done := make(chan error, 1)
	go func() {
		err := e.srv.st.reqs.checkpoint()
		if err == nil {
			_, err = e.srv.st.events("dev1", 0, 10)
		}
		done <- err
	}()
	var err error
	select {
	case err = <-done:
		close(w.release)
	case <-time.After(waitLimit):
		t.Error("the store's commits and reads wait for a copy's reader")
		close(w.release)
		err = <-done
	}
	if err != nil {
		t.Error(err)
	}
	if err := <-copied; err != nil {
		t.Error(err)
	}
	if left, _ := filepath.Glob(filepath.Join(e.cfg.DataDir, backupSpool)); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
