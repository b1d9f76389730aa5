// Command tether-chaos runs tether's chaos test: real relay and agent
// processes, a fault-injecting proxy between them, a stream of requests
// against the simulated board, and random faults (kill -9 of either
// process, resets, half-open links, latency, slow and partial writes). It
// then checks that no request was lost, run twice, left unresolved or
// misreported, and prints one line:
//
//	chaos: requests=N faults=F lost=0 duplicate_executions=0 unresolved=0 wrong_state=0
//
// with a breakdown on stderr, exiting 1 when any counter is not 0. The
// definitions of the counters are in package internal/chaos.
//
//	tether-chaos [-requests 1000] [-faults 100] [-seed N] [-relay-bin PATH -agent-bin PATH]
//
// Without -relay-bin/-agent-bin it builds both from the module it runs in.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tetherhq/tether/internal/chaos"
)

func main() {
	os.Exit(run())
}

func run() int {
	var o chaos.Options
	flag.IntVar(&o.Requests, "requests", 1000, "requests the relay must acknowledge")
	flag.IntVar(&o.Faults, "faults", 100, "faults to inject")
	flag.Uint64Var(&o.Seed, "seed", 0, "seed of the fault schedule (0: from the clock; printed)")
	flag.IntVar(&o.Concurrency, "concurrency", 8, "submitting clients")
	flag.DurationVar(&o.Timeout, "timeout", 0, "timeout of every request (default 60s)")
	flag.DurationVar(&o.Ping, "ping", 0, "relay ping period (default 250ms)")
	flag.IntVar(&o.Credits, "credits", 0, "agent worker slots (default 2)")
	flag.DurationVar(&o.MockDelay, "mock-delay", 0, "simulated board time per request (default 20ms)")
	flag.DurationVar(&o.Gap, "gap", 0, "mean pause before each fault once the device is back (default 150ms)")
	flag.DurationVar(&o.Drain, "drain", 0, "bound on the wait for every request to end (default timeout+30s)")
	flag.StringVar(&o.Dir, "dir", "", "working directory, kept (default: a temporary one, removed after a clean run)")
	flag.StringVar(&o.RelayBin, "relay-bin", "", "tether-relay binary (default: build it)")
	flag.StringVar(&o.AgentBin, "agent-bin", "", "tether-agent binary (default: build it)")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tether-chaos: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	o.Log = os.Stderr
	if *quiet {
		o.Log = io.Discard
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.RelayBin == "" || o.AgentBin == "" {
		bin, err := os.MkdirTemp("", "tether-chaos-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "tether-chaos:", err)
			return 2
		}
		defer os.RemoveAll(bin)
		relayBin, agentBin, err := chaos.BuildBinaries(ctx, bin)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tether-chaos:", err)
			return 2
		}
		if o.RelayBin == "" {
			o.RelayBin = relayBin
		}
		if o.AgentBin == "" {
			o.AgentBin = agentBin
		}
	}

	rep, err := chaos.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tether-chaos:", err)
		if rep.Dir != "" {
			fmt.Fprintln(os.Stderr, "tether-chaos: logs kept in", rep.Dir)
		}
		return 2
	}
	rep.WriteDetail(os.Stderr)
	fmt.Println(rep.Line())
	if !rep.OK() {
		return 1
	}
	return 0
}
