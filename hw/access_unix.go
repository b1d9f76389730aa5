//go:build unix

package hw

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

func nodeExists(node string) bool {
	_, err := os.Stat(node)
	return err == nil
}

// nodeAccessProblem returns "" when node is missing or can be opened for
// reading and writing, and otherwise a sentence naming the node, its group
// and what to do about it.
func nodeAccessProblem(node string) string {
	fi, err := os.Stat(node)
	if err != nil {
		return ""
	}
	f, err := os.OpenFile(node, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return ""
	}
	if !errors.Is(err, fs.ErrPermission) {
		return ""
	}
	group, inGroup := "", false
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		gid := int(st.Gid)
		group = strconv.Itoa(gid)
		if g, err := user.LookupGroupId(group); err == nil {
			group = g.Name
		}
		if gids, err := os.Getgroups(); err == nil {
			for _, g := range gids {
				inGroup = inGroup || g == gid
			}
		}
		inGroup = inGroup || os.Getegid() == gid
	}
	return accessMessage(node, fi.Mode(), group, inGroup)
}

// accessMessage words a refused device node for the operator.
func accessMessage(node string, mode fs.FileMode, group string, inGroup bool) string {
	if group == "" {
		return fmt.Sprintf("%s (mode %s) cannot be opened by this user", node, mode.Perm())
	}
	if inGroup {
		return fmt.Sprintf("%s (group %s, mode %s) cannot be opened although this process is in group %s; check the node's mode (udev rules)", node, group, mode.Perm(), group)
	}
	return fmt.Sprintf("%s (group %s, mode %s) cannot be opened: this process is not in group %s; run `sudo usermod -aG %s <agent user>` and restart the agent (a new login picks up the group)", node, group, mode.Perm(), group, group)
}
