package agent

import (
	"os"
	"syscall"
)

// datasync flushes f's data, and its size when that changed, but not its
// timestamps: with the journal's zeros written ahead (see journalChunk), a
// record's sync writes its data pages only, and never waits for the
// filesystem's own journal.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) {
		for {
			err = syscall.Fdatasync(int(fd))
			if err != syscall.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}
