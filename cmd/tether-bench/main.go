// Command tether-bench measures tether on this machine beside raw TCP and
// NATS request/reply, for capacity planning. It prints every figure as a
// "name value unit" line with its ratio to a baseline of the same run and
// writes them all to a JSON report (dist/bench.json by default).
// BENCHMARKS.md in the repository explains each figure.
//
//	tether-bench [--quick] [--only rt,tput,footprint,capacity,storm] [--json FILE] ...
//
// The relay, nats-server, agents and the TCP echo server each run in a
// process of their own: tether-bench starts itself again with a role name
// as the first argument (relay, nats, pong, agents, responders, swarm).
// Roles are internal and may change.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/tetherhq/tether/internal/bench"
)

func main() {
	if len(os.Args) > 1 && bench.IsRole(os.Args[1]) {
		if err := bench.RunRole(os.Args[1], os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "tether-bench %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tether-bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tether-bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "tiny sizes: check that every benchmark runs")
	only := fs.String("only", "", "comma-separated subset: rt, tput, footprint, capacity, storm")
	jsonPath := fs.String("json", "", "write the report here (default dist/bench.json)")
	work := fs.String("work", "", "keep data and process logs in this directory")
	rt := fs.Int("round-trips", 0, "round trips per latency figure")
	conc := fs.Int("concurrency", 0, "callers of the concurrent round trips")
	reqs := fs.Int("requests", 0, "requests per throughput figure")
	agents := fs.Int("agents", 0, "agents of the aggregate throughput figure")
	credits := fs.Int("credits", 0, "credits of the single-agent throughput figure")
	capacity := fs.String("capacity", "", "comma-separated idle agent counts (default 10000,50000)")
	storm := fs.Int("storm", 0, "agents of the reconnect storm")
	burst := fs.Int("burst", 0, "requests of the agent footprint burst")
	agentBin := fs.String("agent-bin", "", "stripped tether-agent to measure (default DIST/tether-agent-linux-GOARCH, built if missing)")
	dist := fs.String("dist", "", "make cross output directory (default dist)")
	repeat := fs.Int("repeat", 0, "run the round-trip and throughput benchmarks this many times and report each figure's median (default 3, 1 with --quick)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := bench.DefaultOptions()
	if *quick {
		opts = bench.QuickOptions()
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	opts.Self = []string{self}
	setStr(&opts.JSON, *jsonPath)
	setStr(&opts.Work, *work)
	setStr(&opts.AgentBin, *agentBin)
	setStr(&opts.Dist, *dist)
	setInt(&opts.RoundTrips, *rt)
	setInt(&opts.Concurrency, *conc)
	setInt(&opts.Requests, *reqs)
	setInt(&opts.Agents, *agents)
	setInt(&opts.Credits, *credits)
	setInt(&opts.Storm, *storm)
	setInt(&opts.Burst, *burst)
	setInt(&opts.Repeat, *repeat)
	if *only != "" {
		opts.Only = strings.Split(*only, ",")
	}
	if *capacity != "" {
		opts.Capacity = nil
		for _, s := range strings.Split(*capacity, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				return fmt.Errorf("--capacity: bad count %q", s)
			}
			opts.Capacity = append(opts.Capacity, n)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_, err = bench.Run(ctx, opts)
	return err
}

func setStr(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func setInt(dst *int, v int) {
	if v > 0 {
		*dst = v
	}
}
