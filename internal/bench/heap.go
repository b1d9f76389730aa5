package bench

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// heapSample is what the relay's /metrics says of its Go heap: bytes and
// objects allocated since it started, and collections completed.
type heapSample struct{ alloc, objects, gcs float64 }

// relayHeap reads the relay's Go runtime counters from its /metrics,
// which it serves to loopback peers.
func (t *tether) relayHeap() (heapSample, error) {
	resp, err := t.hc.Get("http://" + t.addr + "/metrics")
	if err != nil {
		return heapSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return heapSample{}, fmt.Errorf("bench: relay /metrics: %s", resp.Status)
	}
	var s heapSample
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		var dst *float64
		switch name {
		case "go_memstats_alloc_bytes_total":
			dst = &s.alloc
		case "go_memstats_mallocs_total":
			dst = &s.objects
		case "go_gc_duration_seconds_count":
			dst = &s.gcs
		}
		if !ok || dst == nil {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return heapSample{}, fmt.Errorf("bench: relay /metrics: %s: %w", name, err)
		}
		*dst = v
		found++
	}
	if err := sc.Err(); err != nil {
		return heapSample{}, err
	}
	if found != 3 {
		return heapSample{}, fmt.Errorf("bench: relay /metrics: Go heap counters missing")
	}
	return s, nil
}

// addHeap adds NAME_relay_alloc and NAME_relay_objects, the relay's
// garbage per request in bytes and in objects, and NAME_relay_gc, its
// collections per 1,000 requests, from the counters' growth over the
// figure's rounds.
func (r *runner) addHeap(name string, grew heapSample, n int) {
	r.add(&Figure{Name: name + "_relay_alloc", Value: float64(int64(grew.alloc / float64(n))), Unit: "B/req", Baseline: name + "_relay_alloc",
		Note: "bytes the relay allocated per request (go_memstats_alloc_bytes_total of its /metrics, read before and after each round, less what a read itself allocates)"})
	r.add(&Figure{Name: name + "_relay_objects", Value: float64(int64(grew.objects*10/float64(n))) / 10, Unit: "obj/req", Baseline: name + "_relay_objects",
		Note: "objects the relay allocated per request (go_memstats_mallocs_total), read as _relay_alloc"})
	r.add(&Figure{Name: name + "_relay_gc", Value: float64(int64(grew.gcs*1000/float64(n)*100)) / 100, Unit: "GC/kreq", Baseline: name + "_relay_gc",
		Note: "the relay's garbage collections per 1,000 requests (go_gc_duration_seconds_count of its /metrics)"})
}
