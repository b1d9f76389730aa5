//go:build unix

package agent

import (
	"errors"
	"os"
	"syscall"
)

// lockDir takes an exclusive lock on path (a lock file in the state
// directory), creating it if needed, without waiting: held is true if
// another process holds it. The lock lasts until f is closed, and goes
// with the process however it ends, so a crash never leaves it behind.
func lockDir(path string) (f *os.File, held bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, journalPerm)
	if err != nil {
		return nil, false, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, true, nil
		}
		return nil, false, err
	}
	return f, false, nil
}

// unlinked reports whether f's file has no name left: removed (with its
// directory, say) or replaced by a rename. One fstat, with no path to
// resolve.
func unlinked(f *os.File) (bool, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false, err
	}
	return st.Nlink == 0, nil
}
