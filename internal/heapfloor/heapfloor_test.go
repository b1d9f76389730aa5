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
		// Small live heaps: the runtime's minimum goal, 4 MiB × GOGC/100,
		// is what reaches live + floor first.
		{live: 2 * mib, floor: 16 * mib, base: 100, want: 450},  // goal 18 MiB
		{live: 3 * mib, floor: 16 * mib, base: 100, want: 475},  // goal 19 MiB
		{live: 0, floor: 16 * mib, base: 100, want: 400},        // goal 16 MiB
		{live: 6 * mib, floor: 16 * mib, base: 100, want: 266},  // proportional: 6 × 3.66 = 21.96 MiB
		{live: 16 * mib, floor: 16 * mib, base: 100, want: 100}, // GOGC's own room is the floor
		{live: 64 * mib, floor: 16 * mib, base: 100, want: 100}, // GOGC alone leaves more room
		{live: 64 * mib, floor: 16 * mib, base: 200, want: 200},
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
	// An empty GOGC is the runtime's default, not a setting.
	t.Setenv("GOGC", "")
	stop2, active := Keep(256 << 20)
	defer stop2()
	if !active {
		t.Fatal("Keep not active with an empty GOGC")
	}
}

// The goal the runtime derives from the percentage Keep sets stays within
// live + floor: the minimum heap scales with GOGC as well.
func TestKeepGoalWithinFloor(t *testing.T) {
	unsetGOGC(t)
	const floor = 16 << 20
	stop, _ := Keep(floor)
	defer stop()
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/gc/gogc:percent"}}
	waitGOGC(t, func(p int) bool { return p > 100 })
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	metrics.Read(s)
	goal, live, p := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	// Stacks and globals count towards the goal too, and the keeper's
	// percentage lags the live heap by a cycle: allow 2 MiB.
	if goal > live+floor+2<<20 {
		t.Fatalf("heap goal %d MiB with %d MiB live at GOGC %d: more than the floor's %d MiB of room",
			goal>>20, live>>20, p, floor>>20)
	}
}
