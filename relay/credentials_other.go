//go:build !linux

package relay

import "os"

// fileVersion is empty where the open file is not checked: the credentials
// file is not kept open (Windows would refuse its replacement by rename)
// and its path is stat'ed on every call instead.
type fileVersion struct{}

func versionOf(*os.File) (fileVersion, bool) { return fileVersion{}, false }

func unchanged(*os.File, fileVersion) bool { return false }
