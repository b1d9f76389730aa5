//go:build !unix

package agent

import "os"

// lockDir opens the lock file where flock is unavailable, without locking
// it: two agents on one state directory are not detected there.
func lockDir(path string) (f *os.File, held bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, journalPerm)
	return f, false, err
}
