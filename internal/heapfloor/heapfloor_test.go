package heapfloor

import (
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		base, want  int
	}{
		{live: 2 * mib, floor: 16 * mib, base: 100, want: 800},
		{live: 3 * mib, floor: 16 * mib, base: 100, want: 534}, // rounded up: never less room than floor
		{live: 16 * mib, floor: 16 * mib, base: 100, want: 100},
		{live: 64 * mib, floor: 16 * mib, base: 100, want: 100}, // GOGC alone leaves more room
		{live: 64 * mib, floor: 16 * mib, base: 200, want: 200},
		{live: 0, floor: 16 * mib, base: 100, want: 1600}, // counted as 1 MiB
		{live: 1 * mib, floor: 1 << 40, base: 100, want: maxPercent},
	} {
		if got := percentFor(c.live, c.floor, c.base); got != c.want {
			t.Errorf("percentFor(%d, %d, %d) = %d, want %d", c.live, c.floor, c.base, got, c.want)
		}
	}
}

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// waitGOGC runs collections until the percentage satisfies ok: the
// keeper retunes from a cleanup, which runs after a cycle, on its own
// goroutine.
func waitGOGC(t *testing.T, ok func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		p := gogc()
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC stayed %d", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func unsetGOGC(t *testing.T) {
	t.Setenv("GOGC", "") // restored after the test
	os.Unsetenv("GOGC")
}

func TestKeepRaisesAndRestores(t *testing.T) {
	unsetGOGC(t)
	base := gogc()
	// A test binary's live heap is a few MiB: a 256 MiB floor needs far
	// more than GOGC's 100%.
	stop, active := Keep(256 << 20)
	if !active {
		t.Fatal("Keep not active with GOGC unset")
	}
	p := waitGOGC(t, func(p int) bool { return p > base })
	stop()
	if got := gogc(); got != base {
		t.Fatalf("after stop GOGC = %d, want %d (it was %d while kept)", got, base, p)
	}
	// A cleanup armed before stop must not raise it again.
	for range 3 {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	if got := gogc(); got != base {
		t.Fatalf("GOGC = %d after stop and more cycles, want %d", got, base)
	}
}

func TestKeepFollowsALargeLiveHeap(t *testing.T) {
	unsetGOGC(t)
	base := gogc()
	live := make([]byte, 64<<20)
	for i := range live {
		live[i] = 1 // touched, so it is really held
	}
	k := start(1<<20, base)
	defer k.stop()
	// With 64 MiB live, GOGC's own room is far above a 1 MiB floor: the
	// keeper, once it has seen cycles, has set base and nothing else.
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
		if p := gogc(); p != base {
			t.Fatalf("GOGC = %d with a large live heap, want %d", p, base)
		}
		k.mu.Lock()
		tuned, percent := k.tuned, k.percent
		k.mu.Unlock()
		if tuned >= 3 {
			if percent != base {
				t.Fatalf("keeper set %d, want %d", percent, base)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keeper ran %d times in 10 s of collections", tuned)
		}
	}
	runtime.KeepAlive(live)
}

func TestKeepLeavesAnOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "100")
	stop, active := Keep(256 << 20)
	defer stop()
	if active {
		t.Fatal("Keep active although GOGC is set")
	}
}
