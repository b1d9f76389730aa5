//go:build !linux

package relay

import "os"

// datasync flushes f's data: a full fsync where fdatasync is not at hand.
func datasync(f *os.File) error { return f.Sync() }
