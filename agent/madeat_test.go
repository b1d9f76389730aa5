package agent

import (
	"testing"
	"time"
)

// A journal time far in the future (a clock set centuries ahead when the
// event was recorded, or a corrupt record) is not believed: the age is
// worked out in milliseconds, not in a time.Duration that the difference
// overflows, which could wrap around to a plausible age.
func TestMadeAtFarFutureTimeNotBelieved(t *testing.T) {
	now := time.Now()
	// now − then, in nanoseconds, wraps around int64 to about an hour.
	for _, ahead := range []int64{18446740473709, 1 << 62} {
		ms := now.UnixMilli() + ahead
		if ms <= 0 {
			continue
		}
		if age := now.Sub(madeAt(now, ms)); age != 0 {
			t.Errorf("made %d ms ahead of now: age %v, want 0 (now)", ahead, age)
		}
	}
}
