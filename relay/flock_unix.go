//go:build unix

package relay

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"syscall"
)

// lockFile takes an exclusive flock on path, creating it if needed, and
// returns the function that releases it. A symbolic link at path is
// refused, not followed: the data directory belongs to the relay's user,
// and an admin command run as root must not open (create, chown) a file
// that user points it to elsewhere.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := ownLikeDir(f, filepath.Dir(path)); err != nil {
		f.Close()
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// ownLikeDir gives f, a file root made in the relay's data directory dir,
// the directory's owner: an admin command run as root (sudo tether-relay
// client add …) must not leave a file the relay, running as its own user,
// cannot read or lock. Other users cannot change owners, nor need to.
// Only a regular file with no other name is given away: a hard link the
// directory's owner made to a file of root's elsewhere is not.
func ownLikeDir(f *os.File, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	ffi, err := f.Stat()
	if err != nil {
		return err
	}
	if fst, ok := ffi.Sys().(*syscall.Stat_t); !ok || !ffi.Mode().IsRegular() || fst.Nlink != 1 {
		return fmt.Errorf("%s is not a file of the data directory's own (a link?); not giving it to the directory's owner", f.Name())
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}

// othersDir reports whether dir belongs to a user other than root while
// the process runs as root, and names that user.
func othersDir(dir string) (owner string, ok bool) {
	if os.Geteuid() != 0 {
		return "", false
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", false
	}
	st, isUnix := fi.Sys().(*syscall.Stat_t)
	if !isUnix || st.Uid == 0 {
		return "", false
	}
	owner = fmt.Sprint(st.Uid)
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	return owner, true
}
