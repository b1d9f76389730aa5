package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherhq/tether/internal/bench"
)

// roleEnv makes the test binary act as a bench role: the smoke run starts
// its relay, agents and swarm by re-running this binary.
const roleEnv = "TETHER_BENCH_ROLE"

func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "1" && len(os.Args) > 1 && bench.IsRole(os.Args[1]) {
		if err := bench.RunRole(os.Args[1], os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "role %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// figureLine is the printed form of a figure: name, value, unit, and a
// ratio to a baseline or budget.
var figureLine = regexp.MustCompile(`^[a-z0-9_]+ -?[0-9.]+ [A-Za-z/]+ x([0-9.]+|\?) [a-z0-9_]+( \(x[0-9.]+\.\.x[0-9.]+ in [0-9]+ runs\))?( \[budget .+: (ok|MISSED)\])?$`)

// TestSmoke runs every benchmark at tiny sizes and checks only that the
// output is well formed: benchmarks measure, they never assert on time.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	opts := bench.QuickOptions()
	opts.Self = []string{os.Args[0]}
	opts.SelfEnv = []string{roleEnv + "=1"}
	var out bytes.Buffer
	opts.Out = &out
	opts.JSON = filepath.Join(dir, "bench.json")
	opts.Work = filepath.Join(dir, "work")
	opts.Dist = filepath.Join(dir, "no-dist")
	opts.ModuleDir = "../.."
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, opts)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}

	var figures int
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		figures++
		if !figureLine.MatchString(l) {
			t.Errorf("malformed figure line %q", l)
		}
	}
	b, err := os.ReadFile(opts.JSON)
	if err != nil {
		t.Fatal(err)
	}
	var back bench.Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("bench.json: %v", err)
	}
	if len(back.Figures) != figures || len(rep.Figures) != figures {
		t.Errorf("bench.json has %d figures, the output %d", len(back.Figures), figures)
	}
	// Every benchmark must have produced its figures.
	for _, want := range []string{
		"tcp_seq_p50", "nats_seq_p99", "disk_sync_p50", "disk_sync_paced_p99",
		"rt_rest_seq_p50", "rt_rest_c4_p999", "rt_rest_seq_relay_alloc", "rt_rest_seq_relay_objects", "rt_rest_seq_relay_gc",
		"tput_10agents_rest", "tput_1agent_8credits_rest", "nats_tput_10agents",
		"relay_200_mem_per_conn", "nats_200_mem_per_conn", "relay_200_upgrades_per_s",
		"storm_back_99", "storm_back_100", "storm_attempts_per_agent",
		"agent_rss_idle", "agent_rss_burst_hwm", "agent_bytes_written_per_req",
	} {
		found := false
		for _, f := range back.Figures {
			if f.Name == want {
				found = true
				if f.Unit == "" || f.Value < 0 {
					t.Errorf("figure %s: value %v unit %q", want, f.Value, f.Unit)
				}
			}
		}
		if !found {
			t.Errorf("figure %s missing", want)
		}
	}
}
