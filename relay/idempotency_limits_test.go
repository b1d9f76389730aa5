package relay

import (
	"net/http"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// A submission repeated with its key adds nothing to the device's queue,
// as at a full queue (TestKeyedRetryAtAFullQueue): the submit rate limits
// do not refuse it either, or a client whose answer was lost (the CLI's
// resubmission, the dashboard's resend after a reconnect) is told 429 for
// a request that exists and may run, and takes it for not submitted.
func TestKeyedRetryNotRateLimited(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
	}{
		{"client", func(c *Config) { c.ClientRate, c.ClientBurst = 0.001, 1 }},
		{"device", func(c *Config) { c.DeviceRate, c.DeviceBurst = 0.001, 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.tweak)
			st, first, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
			if st != http.StatusAccepted {
				t.Fatalf("first: %d %s", st, raw)
			}
			if st, _, raw := e.submitKeyed(e.key, "", `{"method":"m"}`); st != http.StatusTooManyRequests {
				t.Fatalf("a new submission over the rate: %d %s, want 429", st, raw)
			}
			st, rec, raw := e.submitKeyed(e.key, "k", `{"method":"m"}`)
			if st != http.StatusAccepted || rec.ID != first.ID {
				t.Fatalf("repeat with the key over the rate: %d %s, want 202 with %s", st, raw, first.ID)
			}
			c := dialClient(e)
			c.sendJSON(map[string]any{"type": "call", "ref": "r", "device": "dev1", "method": "m", "key": "k"})
			if acc := clientNext[*protocol.ClientAccepted](c); acc.ID != first.ID {
				t.Fatalf("call with the key over the rate: %+v, want %s", acc, first.ID)
			}
		})
	}
}

// An Idempotency-Key header sent with no value at all is refused, as the
// empty quoted string is (TestEmptyIdempotencyKeyRefused): the client
// believes its retries are safe, and each would make a new request.
func TestBlankIdempotencyKeyHeaderRefused(t *testing.T) {
	e := newEnv(t)
	for _, vals := range [][]string{{""}, {" "}, {"a", "b"}} {
		st, b := e.doAs(e.key, http.Header{"Idempotency-Key": vals}, "POST", "/v1/devices/dev1/requests", `{"method":"m"}`)
		if st != http.StatusBadRequest {
			t.Errorf("Idempotency-Key %q: %d %s, want 400", vals, st, b)
		}
	}
	if q := e.device("dev1").Queued; q != 0 {
		t.Fatalf("%d queued, want none", q)
	}
}
