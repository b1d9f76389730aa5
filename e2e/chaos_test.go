package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/internal/chaos"
)

// TestChaosQuick is the quick variant of `make chaos`: real relay and agent
// processes, the fault proxy between them, 150 requests and 20 faults of
// every kind. It must find nothing lost, run twice, unresolved or
// misreported. TETHER_CHAOS_SEED repeats a failed run's schedule.
func TestChaosQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and injects faults for about 20s")
	}
	bin := binaries(t)
	o := chaos.Options{
		RelayBin: filepath.Join(bin, "tether-relay"),
		AgentBin: filepath.Join(bin, "tether-agent"),
		Requests: 150,
		Faults:   20,
		Drain:    90 * time.Second,
	}
	if s := os.Getenv("TETHER_CHAOS_SEED"); s != "" {
		var err error
		if o.Seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	var progress strings.Builder
	o.Log = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 170*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := chaos.Run(ctx, o)
	if err != nil {
		t.Fatalf("chaos run: %v\n%s", err, progress.String())
	}
	var detail strings.Builder
	rep.WriteDetail(&detail)
	t.Logf("%s (in %v)\n%s", rep.Line(), time.Since(start).Round(time.Millisecond), detail.String())
	if !rep.OK() {
		t.Fatalf("%s\nprogress:\n%s", rep.Line(), progress.String())
	}
	if rep.Requests != o.Requests || rep.Faults != o.Faults {
		t.Fatalf("ran %d requests and %d faults, want %d and %d", rep.Requests, rep.Faults, o.Requests, o.Faults)
	}
	for kind, n := range rep.FaultsByKind {
		if n == 0 {
			t.Errorf("no %s fault injected", kind)
		}
	}
	if len(rep.FaultsByKind) != 7 {
		t.Errorf("fault kinds %v, want all 7", rep.FaultsByKind)
	}
}
