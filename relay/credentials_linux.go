package relay

import (
	"os"
	"syscall"
)

// fileVersion is what changes on an open file when it is replaced by
// rename or deleted (nlink drops to 0, ctime moves) or edited in place
// (size, mtime, ctime move).
type fileVersion struct {
	nlink        uint64
	size         int64
	mtime, ctime syscall.Timespec
}

// versionOf returns f's version; ok is false if f cannot be checked.
func versionOf(f *os.File) (v fileVersion, ok bool) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fileVersion{}, false
	}
	return fileVersion{nlink: uint64(st.Nlink), size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, true
}

// unchanged reports whether f is still at version v and still linked
// (replaced or deleted credentials must stop working at once).
func unchanged(f *os.File, v fileVersion) bool {
	now, ok := versionOf(f)
	return ok && now.nlink > 0 && now == v
}
