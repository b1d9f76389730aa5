// Package heapfloor keeps a floor under the garbage collector's heap
// goal.
//
// Go starts a collection when the heap has grown by GOGC per cent (100 by
// default) of what the last one found live, and never below 4 MiB. A
// server whose live heap is small but which allocates steadily, such as
// a relay with a few busy devices, then collects several times a second,
// and every cycle costs CPU and stretches the requests it overlaps. Keep
// raises the percentage after each cycle so that the next one starts
// about floor bytes past the live heap, and never later; once the live
// heap is large enough for GOGC alone to leave that much room, the
// percentage is GOGC's again. The cost is at most floor bytes of garbage
// held between cycles.
//
// An operator who sets GOGC in the environment keeps that setting: Keep
// then does nothing. A memory limit (GOMEMLIMIT) still bounds the heap.
package heapfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// maxPercent bounds the percentage Keep sets, for a live heap near zero.
const maxPercent = 10_000

const liveMetric = "/gc/heap/live:bytes"

// Keep keeps the heap goal at least floor bytes above the live heap until
// stop is called, which gives the percentage back. It reports whether it
// took effect: not when GOGC is set in the environment or turns the
// collector off.
func Keep(floor uint64) (stop func(), active bool) {
	if os.Getenv("GOGC") != "" { // the runtime takes an empty GOGC as 100, so does Keep
		return func() {}, false
	}
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	if base <= 0 {
		return func() {}, false
	}
	return start(floor, base).stop, true
}

func start(floor uint64, base int) *keeper {
	k := &keeper{floor: floor, base: base, sample: []metrics.Sample{{Name: liveMetric}}}
	k.arm()
	return k
}

type keeper struct {
	floor  uint64
	base   int
	sample []metrics.Sample

	mu      sync.Mutex
	stopped bool
	percent int // last set; 0 until the first cycle
	tuned   int // cycles seen
}

// arm sets a sentinel that the next collection finds unreachable; its
// cleanup then retunes and arms the next.
func (k *keeper) arm() {
	s := new(sentinel)
	runtime.AddCleanup(s, func(k *keeper) { k.tune() }, k)
}

// sentinel is big enough not to be batched with other tiny objects, which
// would keep it alive as long as they live.
type sentinel struct{ _ [16]byte }

func (k *keeper) tune() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	metrics.Read(k.sample)
	live := uint64(0)
	if k.sample[0].Value.Kind() == metrics.KindUint64 {
		live = k.sample[0].Value.Uint64()
	}
	k.tuned++
	p := percentFor(live, k.floor, k.base)
	if p != k.percent {
		debug.SetGCPercent(p)
		k.percent = p
	}
	k.arm()
}

// minHeap is the runtime's minimum heap goal at GOGC=100; it scales with
// GOGC, so a raised percentage raises it too.
const minHeap = 4 << 20

// percentFor is the largest GOGC, but never less than base, whose heap
// goal leaves at most floor bytes of room above a live heap of live
// bytes. The runtime's goal is the larger of live × (1 + GOGC/100) and
// minHeap × GOGC/100, so both must stay within live + floor.
func percentFor(live, floor uint64, base int) int {
	p := (live + floor) * 100 / minHeap
	if live > 0 {
		p = min(p, floor*100/live)
	}
	return max(int(min(p, maxPercent)), base)
}

func (k *keeper) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped {
		k.stopped = true
		debug.SetGCPercent(k.base)
	}
}
