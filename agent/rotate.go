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
// old one valid, so a crash in between cannot lock the device out. An
// agent whose token does not come from its token file (none is set, or
// the command line or the environment gives the token) cannot store one
// that a restart would use: it never confirms, and keeps the old token,
// which the relay then keeps valid; a confirmed rotation would lock the
// device out once the old token's grace ended.
func (a *Agent) onRotate(s *session, m *protocol.Rotate) {
	if a.cfg.TokenFile == "" {
		a.log.Error("device token rotation refused: this agent's token does not come from a token file, so a new one would not survive a restart; " +
			"set token_file (and no TETHER_TOKEN or --token) to let the relay rotate it")
		return
	}
	renamed, err := writeFileAtomic(a.cfg.TokenFile, []byte(m.Token+"\n"), 0o600)
	if err != nil {
		if renamed {
			// The file holds the new token, perhaps not yet durably:
			// the agent uses it too, so that file and memory agree. It
			// confirms nothing; the relay takes the next connection
			// with the new token as the confirmation.
			a.token.set(m.Token)
			a.log.Error("new device token written but not synced; using it without confirming", "file", a.cfg.TokenFile, "err", err)
			return
		}
		a.log.Error("new device token not stored; keeping the old one", "file", a.cfg.TokenFile, "err", err)
		return
	}
	a.log.Info("device token rotated", "file", a.cfg.TokenFile)
	a.token.set(m.Token)
	s.send(&protocol.Rotated{})
}

// writeFileAtomic replaces path with data so that after a crash the file
// holds either the old or the new content, never a mix: write a temporary
// file beside it, fsync it, rename it over path, fsync the directory.
// renamed reports whether path holds data (for an error after the rename).
func writeFileAtomic(path string, data []byte, perm os.FileMode) (renamed bool, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return false, fmt.Errorf("agent: %w", err)
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
		return false, fmt.Errorf("agent: write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("agent: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return true, fmt.Errorf("agent: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return true, fmt.Errorf("agent: sync %s: %w", dir, err)
	}
	return true, nil
}
