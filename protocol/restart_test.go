package protocol

import (
	"testing"
	"time"
)

func TestRestartReason(t *testing.T) {
	for _, d := range []time.Duration{0, 1500 * time.Millisecond, 42 * time.Second} {
		got, ok := ParseRestart(CloseRestart, RestartReason(d))
		if !ok || got != d {
			t.Errorf("%v: parsed %v, %v", d, got, ok)
		}
	}
	if d, ok := ParseRestart(CloseRestart, RestartReason(time.Hour)); !ok || d != MaxRestartDelay {
		t.Errorf("an hour: %v, %v; want the cap", d, ok)
	}
	// A count too large for a duration is the cap too, not an overflow
	// into a negative delay (a reconnect at once).
	if d, ok := ParseRestart(CloseRestart, "restart reconnect_ms=10000000000000"); !ok || d != MaxRestartDelay {
		t.Errorf("10^13 ms: %v, %v; want the cap", d, ok)
	}
	bad := []struct {
		code   int
		reason string
	}{
		{1001, RestartReason(time.Second)},
		{CloseRestart, ""},
		{CloseRestart, "relay shutting down"},
		{CloseRestart, "restart reconnect_ms=-5"},
		{CloseRestart, "restart reconnect_ms=12x"},
		{CloseRestart, "restart reconnect_ms=99999999999999999999"},
	}
	for _, b := range bad {
		if d, ok := ParseRestart(b.code, b.reason); ok {
			t.Errorf("%d %q: accepted as %v", b.code, b.reason, d)
		}
	}
}
