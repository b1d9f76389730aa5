// Package bench measures tether against its peers on one machine: round
// trips and throughput beside raw TCP and NATS request/reply, the relay's
// memory per idle agent connection and upgrade rate, a reconnect storm,
// and the agent's footprint. cmd/tether-bench runs it; BENCHMARKS.md
// explains every figure.
//
// Every server under test runs in its own process, started as a role of
// the same executable (Options.Self): the relay, nats-server, the TCP echo
// server, the agents (full ones, or a swarm of lightweight ones for the
// capacity figures) and the NATS responders. Clients run in the calling
// process.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// payloadSize is the size of every round trip's payload: the params of
// sys.ping, a NATS message body, a TCP message.
const payloadSize = 64

// Options sizes a run. DefaultOptions is `make bench`; QuickOptions is
// the smoke run of `make test`.
type Options struct {
	// Self is the command that runs a role: Self[0] is the executable,
	// Self[1:] arguments before the role name. SelfEnv is added to its
	// environment.
	Self    []string
	SelfEnv []string
	// Out receives the figures as "name value unit" lines.
	Out io.Writer
	// JSON is where the report is written; empty means nowhere.
	JSON string
	// Work is a scratch directory; empty means a temporary one, removed
	// at the end.
	Work string
	// Only lists the benchmarks to run (rt, tput, footprint, capacity,
	// storm); empty means all.
	Only []string
	// Quick marks a smoke run in the report.
	Quick bool
	// Repeat runs the round-trip and throughput benchmarks this many
	// times and reports the median of each figure (see Figure.Runs); the
	// runs' own figures are printed as comments.
	Repeat int

	// RoundTrips is the number of measured round trips per latency
	// figure; Concurrency the number of concurrent callers of the
	// concurrent ones.
	RoundTrips  int
	Concurrency int
	// Requests is the number of requests per throughput figure, Agents
	// the number of simulated agents of the first, Credits the credits of
	// the single agent of the second.
	Requests int
	Agents   int
	Credits  int
	// Capacity lists the idle-agent counts whose memory is measured.
	Capacity []int
	// Storm is the number of agents of the reconnect storm.
	Storm int
	// Burst is the number of requests of the agent footprint burst.
	Burst int
	// AgentBin is the stripped tether-agent binary to measure; empty
	// means Dist/tether-agent-linux-<GOARCH>, built if missing.
	AgentBin string
	// Dist is where `make cross` leaves the per-architecture agents.
	Dist string
	// ModuleDir is the module root, for building the agent.
	ModuleDir string
}

// DefaultOptions returns the sizes of `make bench`.
func DefaultOptions() Options {
	return Options{
		Out:         os.Stdout,
		JSON:        "dist/bench.json",
		RoundTrips:  5000,
		Concurrency: 16,
		Requests:    20000,
		Agents:      100,
		Credits:     64,
		Capacity:    []int{10000, 50000},
		Storm:       10000,
		Burst:       1000,
		Dist:        "dist",
		ModuleDir:   ".",
		Repeat:      3,
	}
}

// QuickOptions returns tiny sizes that exercise every benchmark in a few
// seconds.
func QuickOptions() Options {
	o := DefaultOptions()
	o.Quick = true
	o.RoundTrips, o.Concurrency = 200, 4
	o.Requests, o.Agents, o.Credits = 300, 10, 8
	o.Capacity = []int{200}
	o.Storm = 200
	o.Burst = 100
	o.Repeat = 1
	return o
}

// runner holds one run's state.
type runner struct {
	opts     Options
	out      io.Writer
	work     string
	seq      int
	children []*child
	rep      *Report
}

// Run runs the benchmarks and returns the report. It fails if a benchmark
// could not run; the figures measured up to then are in the report (and
// in Options.JSON).
func Run(ctx context.Context, opts Options) (*Report, error) {
	if len(opts.Self) == 0 {
		return nil, errors.New("bench: Options.Self is required")
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	r := &runner{opts: opts, out: opts.Out, rep: &Report{Started: time.Now().UTC(), Machine: thisMachine(), Quick: opts.Quick}}
	if p := os.Getenv("TETHER_BENCH_CLIENT_PPROF"); p != "" {
		go http.ListenAndServe(p, nil) // the clients' pprof, for profiling by hand
	}
	r.work = opts.Work
	if r.work == "" {
		dir, err := os.MkdirTemp("", "tether-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		r.work = dir
	} else if err := os.MkdirAll(r.work, 0o755); err != nil {
		return nil, err
	}
	defer r.stopAll()
	m := r.rep.Machine
	fmt.Fprintf(r.out, "# tether-bench %s/%s, %s, %d cores, %d MiB, Linux %s, %s, load %s\n", m.OS, m.Arch, m.CPU, m.Cores, m.MemMiB, m.Kernel, m.Go, m.Load)

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"rt", r.repeated("rt", r.roundTrips)},
		{"tput", r.repeated("tput", r.throughput)},
		{"footprint", r.footprint},
		{"capacity", r.capacity},
		{"storm", r.storm},
	}
	var errs []error
	for _, s := range steps {
		if !r.wants(s.name) || ctx.Err() != nil {
			continue
		}
		fmt.Fprintf(r.out, "# %s\n", s.name)
		if err := s.fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
			r.rep.Skipped = append(r.rep.Skipped, fmt.Sprintf("%s: %v", s.name, err))
			fmt.Fprintf(r.out, "# %s failed: %v (logs in %s)\n", s.name, err, r.work)
		}
		r.stopAll()
	}
	r.rep.Duration = time.Since(r.rep.Started).Seconds()
	if opts.JSON != "" {
		if err := r.rep.write(opts.JSON); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(r.out, "# wrote %s\n", opts.JSON)
		}
	}
	return r.rep, errors.Join(errs...)
}

// repeated returns fn run Options.Repeat times, with its figures folded
// into their medians (see medians). Each run starts its processes afresh
// and stops them at its end.
func (r *runner) repeated(name string, fn func(context.Context) error) func(context.Context) error {
	n := r.opts.Repeat
	if n <= 1 {
		return fn
	}
	return func(ctx context.Context) error {
		main, out := r.rep, r.out
		defer func() { r.rep, r.out = main, out }()
		var (
			runs []*Report
			err  error
		)
		for i := range n {
			fmt.Fprintf(out, "# %s, run %d of %d\n", name, i+1, n)
			r.rep = &Report{}
			r.out = &commentWriter{w: out}
			err = fn(ctx)
			r.stopAll()
			for _, s := range r.rep.Skipped {
				if !slices.Contains(main.Skipped, s) {
					main.Skipped = append(main.Skipped, s)
				}
			}
			if err == nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			// A run that failed is left out of the medians, unless no
			// run completed: its figures are then all there is.
			if err == nil || len(runs) == 0 {
				runs = append(runs, r.rep)
			}
			if err != nil {
				break
			}
		}
		fmt.Fprintf(out, "# %s: the median of %d runs, and the range of the ratio\n", name, len(runs))
		main.addMedians(out, medians(runs))
		return err
	}
}

// commentWriter prints what it is given as comment lines ("#   " before
// each line), so that the figures of one of several runs stay out of the
// "name value unit" lines.
type commentWriter struct {
	w   io.Writer
	mid bool // within a line
}

func (c *commentWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if !c.mid {
			if _, err := io.WriteString(c.w, "#   "); err != nil {
				return n - len(p), err
			}
			c.mid = true
		}
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line = p[:i+1]
		}
		w, err := c.w.Write(line)
		if err != nil {
			return n - len(p) + w, err
		}
		c.mid = line[len(line)-1] != '\n'
		p = p[len(line):]
	}
	return n, nil
}

func (r *runner) wants(name string) bool {
	if len(r.opts.Only) == 0 {
		return true
	}
	for _, o := range r.opts.Only {
		if o == name {
			return true
		}
	}
	return false
}

// skip notes a figure group that could not be measured, without failing
// the run.
func (r *runner) skip(what, why string) {
	r.rep.Skipped = append(r.rep.Skipped, what+": "+why)
	fmt.Fprintf(r.out, "# skipped %s: %s\n", what, why)
}

func (r *runner) add(f *Figure) { r.rep.add(r.out, f) }

func (r *runner) stopAll() {
	for i := len(r.children) - 1; i >= 0; i-- {
		r.children[i].stop(15 * time.Second)
	}
	r.children = nil
}

// dir returns a fresh directory in the work area.
func (r *runner) dir(name string) (string, error) {
	r.seq++
	d := filepath.Join(r.work, fmt.Sprintf("%02d-%s", r.seq, name))
	return d, os.MkdirAll(d, 0o755)
}

// startRelay starts a relay process on data and returns it with its
// address. The relay runs with its defaults, except that unthrottled > 0
// lifts upgrade admission control for that many sessions; extra are more
// flags of the relay role.
func (r *runner) startRelay(data, listen string, unthrottled int, extra ...string) (*child, string, error) {
	args := append([]string{"--data", data, "--listen", listen}, extra...)
	if unthrottled > 0 {
		args = append(args, "--unthrottled", strconv.Itoa(unthrottled))
	}
	if p := os.Getenv("TETHER_BENCH_RELAY_PPROF"); p != "" {
		args = append(args, "--pprof", p) // for profiling by hand
	}
	c, err := r.start("relay", args...)
	if err != nil {
		return nil, "", err
	}
	f, err := c.expect("ready", 60*time.Second)
	if err != nil {
		return nil, "", err
	}
	return c, f[0], nil
}
