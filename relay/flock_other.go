//go:build !unix

package relay

// lockFile is a no-op where flock is unavailable: concurrent admin commands
// on such systems may lose an update.
func lockFile(path string) (func(), error) { return func() {}, nil }
