//go:build !unix

package hw

import "os"

func nodeExists(node string) bool {
	_, err := os.Stat(node)
	return err == nil
}

// nodeAccessProblem has nothing to check where there are no device nodes.
func nodeAccessProblem(node string) string { return "" }
