package relay

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// AdminSocket is the Unix socket, in the data directory, on which a
// serving relay answers its operator's tools (tether-relay backup). The
// socket is 0600: only the relay's user (and root) can reach it, who can
// read the data directory anyway.
const AdminSocket = "admin.sock"

// A backup is an uncompressed tar stream of two files, a data directory
// in itself once unpacked into an empty one:
//
//	relay.db          a consistent copy of the store, the request log
//	                  moved into it first
//	credentials.json  as the admin commands last wrote it (absent if
//	                  none was ever added)
//
// A copy is taken from a relay that is serving, so the store in it is
// marked open, as after a crash: a relay started on it treats every
// request still pending in it as possibly run (never expired, and
// delivered again only to be answered from the agent's journal if it
// did). That is what a restore needs, since the requests queued in an
// old copy may well have run since it was taken.
const (
	backupDB    = "relay.db"
	backupCreds = credentialsFile
)

// ErrStopping is returned by Backup once the relay has begun to stop.
var ErrStopping = errors.New("relay: stopping")

// Backup writes a copy of the relay's data to w (see AdminSocket and the
// format above) while it serves: every change committed before the call
// is in it. ctx ends a copy in progress. Close waits for the store to be
// copied (to a file beside it), not for the copy to be sent.
func (s *Server) Backup(ctx context.Context, w io.Writer) (err error) {
	defer func() { s.met.backup(err) }()
	// The store is copied to a file next to it first, and sent from
	// there: a read transaction held while a slow reader (ssh, a stopped
	// pipe) takes the copy would hold up every commit that grows the
	// file (bbolt remaps it only once no reader holds the old mapping),
	// and every read behind that commit.
	spool, err := os.CreateTemp(s.cfg.DataDir, backupSpool)
	if err != nil {
		return fmt.Errorf("relay: backup: %w", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	size, err := s.copyStore(ctx, spool)
	if err == nil {
		_, err = spool.Seek(0, io.SeekStart)
	}
	if err != nil {
		return err
	}
	return writeBackup(ctx, s.cfg.DataDir, size, func(w io.Writer) error {
		_, err := io.Copy(w, io.LimitReader(spool, size))
		return err
	}, w)
}

// copyStore writes a consistent copy of the store to f, every change
// committed before the call in it, and returns its size.
func (s *Server) copyStore(ctx context.Context, f *os.File) (int64, error) {
	s.storeMu.RLock()
	defer s.storeMu.RUnlock()
	if s.storeClosed {
		return 0, ErrStopping
	}
	select {
	case <-s.shutdown:
		return 0, ErrStopping
	default:
	}
	if err := s.st.reqs.checkpoint(); err != nil {
		return 0, fmt.Errorf("relay: backup: %w", err)
	}
	var size int64
	err := s.st.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		_, err := tx.WriteTo(ctxWriter{ctx, f})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("relay: backup: %w", err)
	}
	return size, nil
}

// backupSpool names the temporary copy of the store Backup sends from.
const backupSpool = "backup-*.tmp"

// BackupDir writes the copy Backup makes of a data directory no relay is
// serving. It opens the store as a relay starting on it would (a request
// log left by a crash is replayed into it) and closes it cleanly.
func BackupDir(ctx context.Context, dir string, w io.Writer) error {
	path := filepath.Join(dir, backupDB)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("relay: backup: no relay data in %s: %w", dir, err)
	}
	// Opening the store writes to the directory (the request log, made
	// anew if missing): as root, in the directory of the relay's user,
	// that left files the relay could not open, and followed links that
	// user had put there.
	if owner, ok := othersDir(dir); ok {
		return fmt.Errorf("relay: backup: %s belongs to %s and no relay serves it: take the copy as that user (sudo -u %s tether-relay backup …), not as root, which would leave files there the relay cannot open", dir, owner, owner)
	}
	st, err := openStore(path, slog.New(slog.DiscardHandler))
	if errors.Is(err, bolt.ErrTimeout) {
		return fmt.Errorf("relay: backup: %s is in use by a relay that does not answer on %s (a relay older than backups?): %w",
			path, filepath.Join(dir, AdminSocket), err)
	}
	if err != nil {
		return err
	}
	// Nothing else commits to this store: the copy is sent as it is read.
	err = st.db.View(func(tx *bolt.Tx) error {
		return writeBackup(ctx, dir, tx.Size(), func(w io.Writer) error {
			_, err := tx.WriteTo(w)
			return err
		}, w)
	})
	if cerr := st.close(); err == nil {
		err = cerr
	}
	return err
}

// writeBackup writes the copy to w: the credentials, then the store, of
// size bytes, which writeDB writes.
func writeBackup(ctx context.Context, dir string, size int64, writeDB func(io.Writer) error, w io.Writer) error {
	// The admin commands replace credentials.json under this lock, so the
	// copy is one version of it, whole.
	unlock, err := lockFile(filepath.Join(dir, credentialsLock))
	if err != nil {
		return fmt.Errorf("relay: backup: credentials lock: %w", err)
	}
	creds, err := os.ReadFile(filepath.Join(dir, credentialsFile))
	unlock()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("relay: backup: %w", err)
	}
	tw := tar.NewWriter(ctxWriter{ctx, w})
	now := time.Now().UTC().Truncate(time.Second)
	if creds != nil {
		if err := tw.WriteHeader(&tar.Header{Name: backupCreds, Mode: 0o600, Size: int64(len(creds)), ModTime: now, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("relay: backup: %w", err)
		}
		if _, err := tw.Write(creds); err != nil {
			return fmt.Errorf("relay: backup: %w", err)
		}
	}
	err = tw.WriteHeader(&tar.Header{Name: backupDB, Mode: 0o600, Size: size, ModTime: now, Format: tar.FormatPAX})
	if err == nil {
		err = writeDB(tw)
	}
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("relay: backup: %w", err)
	}
	return nil
}

// ctxWriter fails its writes once ctx has ended.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// serveAdmin listens on the data directory's AdminSocket until stop is
// called; stop also ends the copies in progress. A relay that cannot
// listen there (a path too long for a socket, say) serves without it.
func (s *Server) serveAdmin() (stop func()) {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	if s.adminOn {
		return func() {}
	}
	path := filepath.Join(s.cfg.DataDir, AdminSocket)
	// One left by a relay that was killed: the store's lock, held since
	// New, says no other relay serves this directory.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		os.Remove(path)
	}
	// And copies it was sending (Backup).
	if left, err := filepath.Glob(filepath.Join(s.cfg.DataDir, backupSpool)); err == nil {
		for _, p := range left {
			os.Remove(p)
		}
	}
	ln, err := net.Listen("unix", path)
	if err == nil {
		if err = os.Chmod(path, 0o600); err != nil {
			ln.Close()
		}
	}
	if err != nil {
		s.log.Warn("admin socket unavailable: tether-relay backup works only with the relay stopped", "err", err)
		return func() {}
	}
	s.adminOn = true
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/backup", s.handleBackup)
	hs := &http.Server{Handler: mux, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(ln)
	}()
	return func() {
		hs.Close() // ends the copies in progress with their connections
		<-done
		s.adminMu.Lock()
		s.adminOn = false
		s.adminMu.Unlock()
	}
}

func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-tar")
	cw := &countingWriter{w: w}
	start := time.Now()
	err := s.Backup(r.Context(), cw)
	switch {
	case err == nil:
		s.log.Info("backup taken", "bytes", cw.n, "took", time.Since(start).Round(time.Millisecond))
	case cw.n == 0:
		s.log.Warn("backup failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		// Cut the stream: the tool must not take what it has for a copy.
		s.log.Warn("backup failed while being sent", "err", err, "sent", cw.n)
		panic(http.ErrAbortHandler)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
