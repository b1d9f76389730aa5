package main

import (
	"io"
	"strings"
	"testing"
)

// A flag of another subcommand is refused, not ignored: an operator who
// typed "device add pi-1 --methods gpio.*" believed the token limited.
func TestAdminRefusesAnotherSubcommandsFlag(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		kind, verb string
		args       []string
		want       string
	}{
		{"device", "add", []string{"pi-1", "--methods", "gpio.*"}, "--methods applies to client add only"},
		{"device", "add", []string{"--devices", "pi-*", "pi-1"}, "--devices applies to client add only"},
		{"client", "add", []string{"web", "--grace", "1h"}, "--grace applies to device rotate only"},
		{"client", "list", []string{"--methods", "sys.*"}, "--methods applies to client add only"},
	} {
		err := admin(tc.kind, tc.verb, append(tc.args, "--data", dir), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s %q: %v, want %q", tc.kind, tc.verb, tc.args, err, tc.want)
		}
	}
	if err := admin("client", "add", []string{"web", "--methods", "sys.*", "--data", dir}, io.Discard, io.Discard); err != nil {
		t.Fatalf("client add with --methods: %v", err)
	}
}

// --help anywhere prints what was asked for and exits 0, as tether and
// tether-agent do; "device --help" is not taken for a verb.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"device", "--help"}, {"client", "-h"}, {"device", "add", "--help"}} {
		var out, errOut strings.Builder
		if code := exitCode(run(args, &out, &errOut), &errOut); code != 0 || out.Len()+errOut.Len() == 0 || strings.Contains(errOut.String(), "tether-relay:") {
			t.Errorf("%q: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, &out, &errOut)
		}
	}
	if code := exitCode(run([]string{"serve", "--nope"}, io.Discard, io.Discard), io.Discard); code != 2 {
		t.Errorf("serve --nope: exit %d, want 2", code)
	}
}
