//go:build !unix

package agent

import "os"

// lockDir opens the lock file where flock is unavailable, without locking
// it: two agents on one state directory are not detected there.
func lockDir(path string) (f *os.File, held bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, journalPerm)
	return f, false, err
}

// unlinked reports whether f's path no longer names f's file.
func unlinked(f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(f.Name())
	return err != nil || !os.SameFile(fi, pi), nil
}
