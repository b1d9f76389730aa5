//go:build !unix

package relay

import "os"

// lockFile is a no-op where flock is unavailable: concurrent admin commands
// on such systems may lose an update.
func lockFile(path string) (func(), error) { return func() {}, nil }

// ownLikeDir is a no-op where file owners are not Unix ones.
func ownLikeDir(*os.File, string) error { return nil }

// othersDir is false where file owners are not Unix ones.
func othersDir(string) (string, bool) { return "", false }
