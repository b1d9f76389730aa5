package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/tetherhq/tether/protocol"
)

// tokenBox holds the device token in use; a rotate frame replaces it
// while the reader and the dialer read it.
type tokenBox struct {
	mu sync.Mutex
	v  string // guarded by mu
}

func (t *tokenBox) get() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.v
}

func (t *tokenBox) set(v string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.v = v
}

// onRotate stores the relay's new token and confirms it. The confirmation
// is only sent once the token is durable: until then the relay keeps the
// old one valid, so a crash in between cannot lock the device out. Without
// a token file the token lives in memory only, and the next restart falls
// back to the old one, which stops working after the grace period.
func (a *Agent) onRotate(s *session, m *protocol.Rotate) {
	if a.cfg.TokenFile != "" {
		if err := writeFileAtomic(a.cfg.TokenFile, []byte(m.Token+"\n"), 0o600); err != nil {
			a.log.Error("new device token not stored; keeping the old one", "file", a.cfg.TokenFile, "err", err)
			return
		}
		a.log.Info("device token rotated", "file", a.cfg.TokenFile)
	} else {
		a.log.Warn("device token rotated in memory only: it will not survive a restart, and the old token stops working after the grace period; use a token file",
			"grace_ms", m.GraceMs)
	}
	a.token.set(m.Token)
	s.send(&protocol.Rotated{})
}

// writeFileAtomic replaces path with data so that after a crash the file
// holds either the old or the new content, never a mix: write a temporary
// file beside it, fsync it, rename it over path, fsync the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("agent: write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("agent: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("agent: sync %s: %w", dir, err)
	}
	return nil
}
