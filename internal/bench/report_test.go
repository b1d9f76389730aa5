package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Repeated runs fold into one figure per name: the median value, the
// median of the runs' own ratios, their range, and a verdict on the
// median ratio.
func TestMedians(t *testing.T) {
	run := func(nats, rt float64) *Report {
		r := &Report{}
		r.add(&bytes.Buffer{}, &Figure{Name: "nats_seq_p50", Value: nats, Unit: "us"})
		r.add(&bytes.Buffer{}, &Figure{Name: "rt_seq_p50", Value: rt, Unit: "us", Baseline: "nats_seq_p50", Budget: "x1.5", Max: 1.5})
		return r
	}
	// Ratios 2.0, 1.2 and 1.4: the median ratio (1.4) meets the budget
	// although the ratio of the median values (300/150 = 2.0) would not.
	figs := medians([]*Report{run(100, 200), run(250, 300), run(150, 210)})
	if len(figs) != 2 || figs[0].Name != "nats_seq_p50" || figs[1].Name != "rt_seq_p50" {
		t.Fatalf("figures %+v", figs)
	}
	nats, rt := figs[0], figs[1]
	if nats.Value != 150 || nats.Ratio != 1 || len(nats.Runs) != 3 {
		t.Errorf("nats: value %v ratio %v runs %v", nats.Value, nats.Ratio, nats.Runs)
	}
	if rt.Value != 210 || rt.Ratio != 1.4 || rt.RatioMin != 1.2 || rt.RatioMax != 2 {
		t.Errorf("rt: value %v ratio %v range %v..%v", rt.Value, rt.Ratio, rt.RatioMin, rt.RatioMax)
	}
	if rt.Pass == nil || !*rt.Pass {
		t.Errorf("rt verdict %v, want ok", rt.Pass)
	}
	if got, want := rt.line(), "rt_seq_p50 210 us x1.40 nats_seq_p50 (x1.20..x2.00 in 3 runs) [budget x1.5: ok]"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}

	// An even number of runs takes the mean of the middle two; a figure
	// missing from a run (it failed) is folded over the runs that have it.
	two := medians([]*Report{run(100, 200), run(200, 200), {}})
	if two[1].Value != 200 || two[1].Ratio != 1.5 || len(two[1].Runs) != 2 {
		t.Errorf("two runs: value %v ratio %v runs %v", two[1].Value, two[1].Ratio, two[1].Runs)
	}
	if two[1].Pass == nil || !*two[1].Pass {
		t.Errorf("two runs: verdict %v, want ok at exactly the budget", two[1].Pass)
	}
}

func TestCommentWriter(t *testing.T) {
	var out bytes.Buffer
	w := &commentWriter{w: &out}
	for _, s := range []string{"a 1 us", " x1.00 a\n# note\nb 2", " us\n"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	want := "#   a 1 us x1.00 a\n#   # note\n#   b 2 us\n"
	if got := out.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// A repeated benchmark prints its runs as comments and its medians as
// figures; a run that fails is left out of the medians and ends the
// repetitions with its error, and skip reasons are kept once.
func TestRepeated(t *testing.T) {
	var out bytes.Buffer
	r := &runner{opts: Options{Repeat: 3}, out: &out, rep: &Report{}}
	main := r.rep
	run := 0
	step := func(context.Context) error {
		run++
		r.add(&Figure{Name: "a", Value: float64(100 * run), Unit: "us"})
		if run == 3 {
			return errors.New("third run broke")
		}
		r.add(&Figure{Name: "b", Value: float64(150 * run), Unit: "us", Baseline: "a"})
		r.skip("c", "not here")
		return nil
	}
	err := r.repeated("rt", step)(context.Background())
	if err == nil || run != 3 {
		t.Fatalf("err %v after %d runs", err, run)
	}
	if r.rep != main || r.out != &out {
		t.Fatal("the runner's report and output were not given back")
	}
	if len(main.Figures) != 2 {
		t.Fatalf("figures %+v", main.Figures)
	}
	a, b := main.Figures[0], main.Figures[1]
	if len(a.Runs) != 2 || a.Value != 150 || len(b.Runs) != 2 || b.Ratio != 1.5 {
		t.Errorf("a %v %v, b %v ratio %v: the failed run was folded in", a.Value, a.Runs, b.Runs, b.Ratio)
	}
	if len(main.Skipped) != 1 || main.Skipped[0] != "c: not here" {
		t.Errorf("skipped %q", main.Skipped)
	}
	var figures []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasPrefix(l, "#") {
			figures = append(figures, l)
		}
	}
	want := []string{"a 150 us x1.00 a", "b 225 us x1.50 a (x1.50..x1.50 in 2 runs)"}
	if !slices.Equal(figures, want) {
		t.Errorf("figure lines %q, want %q\noutput:\n%s", figures, want, out.String())
	}
}

// A capacity count the descriptor limit forbids is replaced by the most
// the limit allows, in round thousands.
func TestCapacityFit(t *testing.T) {
	for _, c := range []struct {
		max  uint64
		want int
	}{{20000, 19000}, {1048576, 1047000}, {2000, 1000}, {1999, 0}, {1024, 0}} {
		if got := capacityFit(c.max); got != c.want {
			t.Errorf("capacityFit(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}

// A process's CPU time read from its threads' schedstat agrees with the
// kernel's own total (getrusage), to well under a clock tick, where
// /proc/PID/stat would round it to ticks.
func TestProcCPUPrecise(t *testing.T) {
	used := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	burn := func(d time.Duration) { // d of CPU, however loaded the machine
		for start := used(); used()-start < d; {
		}
	}
	burn(30 * time.Millisecond)
	var ru syscall.Rusage
	before, err := schedCPU(os.Getpid())
	if err != nil {
		t.Skipf("no schedstat here: %v", err)
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	r0 := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	burn(50 * time.Millisecond)
	after, err := schedCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	r1 := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	got, want := after-before, r1-r0
	if got < 40*time.Millisecond || got-want > 5*time.Millisecond || want-got > 5*time.Millisecond {
		t.Fatalf("schedstat %v, getrusage %v", got, want)
	}
}
