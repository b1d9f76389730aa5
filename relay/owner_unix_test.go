//go:build unix

package relay

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
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

// The relay's user owns the data directory, so it can plant links there:
// an admin command run as root must not hand it a file elsewhere (a
// symbolic link named credentials.lock to /etc/shadow, say), nor create
// one where a dangling link points.
func TestRootAdminCommandChownsNothingOutsideTheDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, outside := t.TempDir(), t.TempDir()
	const uid, gid = 65534, 65534 // nobody
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("root's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, credentialsLock)); err != nil {
		t.Fatal(err)
	}
	AddClient(dir, "web") // may fail: what matters is what it did
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("a file outside the data directory, linked to as %s, was given to %d:%d", credentialsLock, st.Uid, st.Gid)
	}

	// A dangling link: nothing may be created at its target.
	os.Remove(filepath.Join(dir, credentialsLock))
	made := filepath.Join(outside, "made")
	if err := os.Symlink(made, filepath.Join(dir, credentialsLock)); err != nil {
		t.Fatal(err)
	}
	AddClient(dir, "web2")
	if _, err := os.Lstat(made); err == nil {
		t.Errorf("a file was created outside the data directory through a link named %s", credentialsLock)
	}

	// A hard link (where the system lets users link others' files).
	os.Remove(filepath.Join(dir, credentialsLock))
	if err := os.Link(victim, filepath.Join(dir, credentialsLock)); err != nil {
		t.Skip("no hard links here:", err)
	}
	AddClient(dir, "web3")
	if fi, err = os.Stat(victim); err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("a file outside the data directory, hard-linked as %s, was given to %d:%d", credentialsLock, st.Uid, st.Gid)
	}
}

// A backup run as root of a stopped relay's data directory, which belongs
// to the relay's user, must not leave files there that user cannot open:
// the request log it made (a restored directory has none) kept the relay
// from starting ("request log: open …/wal: permission denied").
func TestRootBackupDirLeavesNothingOfRoots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	st, err := openStore(filepath.Join(dir, backupDB), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.close(); err != nil {
		t.Fatal(err)
	}
	// As a restore leaves it: relay.db and no request log.
	if err := os.RemoveAll(filepath.Join(dir, "wal")); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 65534, 65534 // nobody
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, backupDB), uid, gid); err != nil {
		t.Fatal(err)
	}

	err = BackupDir(context.Background(), dir, io.Discard)
	if err != nil && !strings.Contains(err.Error(), "sudo -u") {
		t.Errorf("backup refused without naming how to take it: %v", err)
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d after the backup, want the directory's %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		return nil
	})
}

// Restored as root into an empty directory of the relay's user, the files
// are that user's, so the relay running as it can open them.
func TestRootRestoreGivesFilesTheDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e := newEnv(t)
	var buf bytes.Buffer
	if err := e.srv.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 65534, 65534 // nobody
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(&buf, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{backupDB, backupCreds} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d, want the directory's %d:%d", name, st.Uid, st.Gid, uid, gid)
		}
	}
}
