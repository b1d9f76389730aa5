//go:build unix

package relay

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// An admin command run as root in a data directory that belongs to the
// relay's user leaves files that user owns, so the relay can still read
// the credentials and take their lock.
func TestRootAdminCommandKeepsDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	const uid, gid = 65534, 65534 // nobody
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if _, err := AddClient(dir, "web"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{credentialsFile, credentialsLock} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d, want the directory's %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
	}
}
