// Package heapfloor keeps a floor under the garbage collector's heap
// goal.
//
// Go starts a collection when the heap has grown by GOGC per cent (100 by
// default) of what the last one found live, and never below 4 MiB. A
// server whose live heap is small but which allocates steadily, such as
// a relay with a few busy devices, then collects several times a second,
// and every cycle costs CPU and stretches the requests it overlaps. Keep
// raises the percentage after each cycle so that the next one starts no
// sooner than floor bytes past the live heap; once the live heap is large
// enough for GOGC alone to leave that much room, the percentage is GOGC's
// again. The cost is at most floor bytes of garbage held between cycles.
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
	if _, set := os.LookupEnv("GOGC"); set {
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

// percentFor is the GOGC that leaves at least floor bytes of room above a
// live heap of live bytes, and never less than base.
func percentFor(live, floor uint64, base int) int {
	live = max(live, 1<<20)
	p := int(min((floor*100+live-1)/live, maxPercent))
	return max(p, base)
}

func (k *keeper) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped {
		k.stopped = true
		debug.SetGCPercent(k.base)
	}
}
