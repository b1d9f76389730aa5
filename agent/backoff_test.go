package agent

import (
	"testing"
	"time"
)

func TestFullJitterStaysUnderGrowingCeiling(t *testing.T) {
	b := newBackoff(500*time.Millisecond, 30*time.Second)
	ceiling := 500 * time.Millisecond
	for i := 0; i < 20; i++ {
		d := b.NextBackOff()
		if d <= 0 || d > ceiling {
			t.Fatalf("attempt %d: wait %v outside (0, %v]", i, d, ceiling)
		}
		ceiling = min(2*ceiling, 30*time.Second)
	}
	// After many attempts the ceiling is the cap, and the waits spread
	// over it instead of clustering at it.
	var low, high int
	for i := 0; i < 1000; i++ {
		if d := b.NextBackOff(); d < 15*time.Second {
			low++
		} else {
			high++
		}
	}
	if low < 300 || high < 300 {
		t.Fatalf("waits not spread over [0, cap): %d below half, %d above", low, high)
	}
	b.Reset()
	if d := b.NextBackOff(); d > 500*time.Millisecond {
		t.Fatalf("after reset wait %v, want <= 500ms", d)
	}
}
