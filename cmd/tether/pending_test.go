package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// tether pending lists the requests a device has yet to finish.
func TestPendingListsQueuedRequests(t *testing.T) {
	base, key := startRelay(t)
	var ids []string
	for _, m := range []string{"sys.ping", "gpio.read"} {
		code, out, errOut := runCLI("--relay", base, "--key", key, "call", "--async", "pi-1", m)
		if code != 0 {
			t.Fatalf("call: exit %d, %s", code, errOut)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	code, out, errOut := runCLI("--relay", base, "--key", key, "pending", "pi-1")
	if code != 0 {
		t.Fatalf("pending: exit %d, %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") ||
		!strings.HasPrefix(lines[1], ids[0]) || !strings.Contains(lines[1], "queued") || !strings.Contains(lines[1], "sys.ping") ||
		!strings.HasPrefix(lines[2], ids[1]) || !strings.Contains(lines[2], "gpio.read") {
		t.Fatalf("pending:\n%s", out)
	}
	code, out, _ = runCLI("--relay", base, "--key", key, "pending", "--json", "pi-1")
	var list struct{ Requests []protocol.Record }
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list.Requests) != 2 || list.Requests[1].ID != ids[1] {
		t.Fatalf("pending --json: exit %d, %s (%v)", code, out, err)
	}
	if code, _, errOut := runCLI("--relay", base, "--key", key, "pending", "pi-9"); code != 2 || !strings.Contains(errOut, "not_found") {
		t.Fatalf("unknown device: exit %d, %s", code, errOut)
	}
	if code, _, errOut := runCLI("--relay", base, "--key", key, "pending"); code != 2 || !strings.Contains(errOut, "want DEVICE") {
		t.Fatalf("no device: exit %d, %s", code, errOut)
	}
}
