package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherhq/tether/internal/faultproxy"
	"github.com/tetherhq/tether/protocol"
)

// Options configure a chaos run. Zero fields take the defaults noted.
type Options struct {
	// RelayBin and AgentBin are the tether-relay and tether-agent
	// executables. Required.
	RelayBin, AgentBin string
	// Requests is how many requests the relay must acknowledge (1000).
	Requests int
	// Faults is how many faults are injected (100).
	Faults int
	// Seed makes the fault schedule repeatable; 0 picks one from the clock.
	Seed uint64
	// Concurrency is the number of submitting clients (8).
	Concurrency int
	// Timeout is every request's timeout (60s).
	Timeout time.Duration
	// Ping is the relay's ping period; the agent takes it from welcome
	// (250ms).
	Ping time.Duration
	// Credits is the agent's worker slots (2).
	Credits int
	// MockDelay is the simulated board's time per request (20ms), long
	// enough that faults find requests running.
	MockDelay time.Duration
	// Gap is the mean pause between a device coming back online and the
	// next fault (150ms).
	Gap time.Duration
	// Drain bounds the wait for every request to end after the storm
	// (Timeout + 30s).
	Drain time.Duration
	// Dir is the working directory (relay data, agent state, execution
	// log, process logs). Empty means a temporary directory, removed after
	// a clean run and kept after a failed one.
	Dir string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

func (o *Options) fill() error {
	if o.RelayBin == "" || o.AgentBin == "" {
		return errors.New("chaos: RelayBin and AgentBin are required")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Requests, 1000)
	def(&o.Faults, 100)
	def(&o.Concurrency, 8)
	def(&o.Credits, 2)
	defDur(&o.Timeout, 60*time.Second)
	defDur(&o.Ping, 250*time.Millisecond)
	defDur(&o.MockDelay, 20*time.Millisecond)
	defDur(&o.Gap, 150*time.Millisecond)
	defDur(&o.Drain, o.Timeout+30*time.Second)
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return nil
}

// The fault kinds, see the package documentation.
const (
	faultAgentKill = "agent-kill"
	faultRelayKill = "relay-kill"
	faultReset     = "reset"
	faultBlackHole = "blackhole"
	faultLatency   = "latency"
	faultSlow      = "slow"
	faultPartial   = "partial"
)

var faultKinds = []string{faultAgentKill, faultRelayKill, faultReset, faultBlackHole, faultLatency, faultSlow, faultPartial}

const device = "pi-chaos"

// sent is a request the relay acknowledged.
type sent struct {
	id     string
	method string
	params json.RawMessage
}

// world is the running system under test.
type world struct {
	o         Options
	dir       string
	dataDir   string
	stateDir  string
	execLog   string
	relayAddr string
	token     string
	cl        *client
	proxy     *faultproxy.Proxy
	rng       *rand.Rand // used only by the fault loop

	// relay and agent are replaced by the fault loop while it runs and
	// used by Run only before and after it.
	relay, agent *proc

	mu sync.Mutex
	// Guarded by mu:
	sent          []sent
	submitRetries int
	submitResent  int
	submitUnknown int
	payloadSeq    int
}

func (w *world) logf(format string, args ...any) {
	fmt.Fprintf(w.o.Log, "chaos: "+format+"\n", args...)
}

// Run performs one chaos run and returns its report. An error means the
// run itself could not be carried out (a binary would not start, ctx
// ended); a completed run reports its findings in the Report.
func Run(ctx context.Context, o Options) (rep Report, err error) {
	if err := o.fill(); err != nil {
		return rep, err
	}
	start := time.Now()
	rep = Report{Seed: o.Seed, FaultsByKind: map[string]int{}, States: map[string]int{}}
	w := &world{o: o, rng: rand.New(rand.NewPCG(o.Seed, o.Seed>>1|1))}

	w.dir = o.Dir
	if w.dir == "" {
		if w.dir, err = os.MkdirTemp("", "tether-chaos-"); err != nil {
			return rep, err
		}
	} else if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return rep, err
	}
	rep.Dir = w.dir
	w.dataDir = filepath.Join(w.dir, "relay-data")
	w.stateDir = filepath.Join(w.dir, "agent-state")
	w.execLog = filepath.Join(w.dir, "exec.log")
	w.logf("seed=%d dir=%s requests=%d faults=%d", o.Seed, w.dir, o.Requests, o.Faults)

	defer func() {
		w.shutdown()
		rep.Elapsed = time.Since(start)
		if err == nil && rep.OK() && o.Dir == "" {
			os.RemoveAll(w.dir)
			rep.Dir = ""
		}
	}()

	if w.token, err = adminSecret(ctx, o.RelayBin, "device", device, w.dataDir); err != nil {
		return rep, err
	}
	key, err := adminSecret(ctx, o.RelayBin, "client", "chaos", w.dataDir)
	if err != nil {
		return rep, err
	}
	if w.relayAddr, err = freeAddr(); err != nil {
		return rep, err
	}
	w.cl = newClient("http://"+w.relayAddr, key, device)
	if err := w.startRelay(ctx); err != nil {
		return rep, err
	}
	if w.proxy, err = faultproxy.Listen("127.0.0.1:0", w.relayAddr, o.Seed); err != nil {
		return rep, err
	}
	if err := w.startAgent(); err != nil {
		return rep, err
	}
	if !waitUntil(ctx, 20*time.Second, 20*time.Millisecond, func() bool { return w.cl.online(ctx) }) {
		return rep, errors.New("chaos: the agent did not come online")
	}

	if err := w.storm(ctx, &rep); err != nil {
		return rep, err
	}
	w.logf("storm over after %v: %d requests acknowledged, %d faults", time.Since(start).Round(time.Millisecond), len(w.sent), rep.Faults)

	recs, gone, err := w.drain(ctx, &rep)
	if err != nil {
		return rep, err
	}
	if !w.agent.stop(15 * time.Second) {
		w.logf("agent did not stop within 15s of SIGTERM; killed")
	}
	counts, malformed, err := readExecLog(w.execLog)
	if err != nil {
		return rep, err
	}
	rep.ExecMalformed = malformed
	w.mu.Lock()
	rep.SubmitRetries, rep.SubmitResent, rep.SubmitUnknown = w.submitRetries, w.submitResent, w.submitUnknown
	w.mu.Unlock()
	check(&rep, w.sent, recs, gone, counts)
	return rep, nil
}

// shutdown stops everything Run started. It is safe at any stage.
func (w *world) shutdown() {
	if w.agent != nil && !w.agent.exited() {
		w.agent.stop(5 * time.Second)
	}
	if w.relay != nil && !w.relay.exited() {
		w.relay.stop(10 * time.Second)
	}
	if w.proxy != nil {
		w.proxy.Close()
	}
	if w.cl != nil {
		w.cl.close()
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startRelay starts the relay on its fixed address and waits until it
// serves. A port still held by the killed incarnation is retried.
func (w *world) startRelay(ctx context.Context) error {
	args := []string{"serve", "--listen", w.relayAddr, "--data", w.dataDir, "--ping", w.o.Ping.String(), "--log-level", "info"}
	for try := 0; ; try++ {
		p, err := startProc("relay", w.o.RelayBin, args, filepath.Join(w.dir, "relay.log"))
		if err != nil {
			return err
		}
		up := waitUntil(ctx, 15*time.Second, 10*time.Millisecond, func() bool {
			return p.exited() || w.cl.healthy(ctx)
		})
		if up && !p.exited() {
			w.relay = p
			return nil
		}
		p.kill()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if try == 20 {
			return fmt.Errorf("chaos: relay does not start (last: %v); see %s", p.err, filepath.Join(w.dir, "relay.log"))
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

func (w *world) startAgent() error {
	args := []string{
		"--relay", "ws://" + w.proxy.Addr(),
		"--token", w.token,
		"--board", "mock",
		"--state", w.stateDir,
		"--mock-exec-log", w.execLog,
		"--mock-delay", w.o.MockDelay.String(),
		// Compact the journal every few dozen requests, so rewrites run
		// while faults hit (the default 1 MiB would never be reached).
		"--journal-compact-bytes", "16384",
		"--credits", fmt.Sprint(w.o.Credits),
		// A storm keeps sessions short, so the backoff never resets; the
		// default 30 s cap would spend the run waiting.
		"--backoff-max", "500ms",
		"--log-level", "info",
	}
	p, err := startProc("agent", w.o.AgentBin, args, filepath.Join(w.dir, "agent.log"))
	if err != nil {
		return err
	}
	w.agent = p
	return nil
}

// storm submits the requests while the faults hit, and returns when both
// are done.
func (w *world) storm(ctx context.Context, rep *Report) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var faultsBegun atomic.Int64
	faultsOver := make(chan struct{})
	var faultErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(faultsOver)
		faultErr = w.faults(ctx, rep, &faultsBegun)
		if faultErr != nil {
			cancel()
		}
	}()

	// Request i is released once i/Requests of the faults have begun, so
	// the stream spans the storm instead of finishing before it starts.
	jobs := make(chan int)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		n, f := int64(w.o.Requests), int64(w.o.Faults)
		for i := int64(0); i < n; i++ {
			for faultsBegun.Load()*n < i*f && !isClosed(faultsOver) {
				if !sleep(ctx, 5*time.Millisecond) {
					return
				}
			}
			select {
			case jobs <- int(i):
			case <-ctx.Done():
				return
			}
		}
	}()

	var subErr error
	var errOnce sync.Once
	var workers sync.WaitGroup
	for range w.o.Concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for range jobs {
				// Spread the submits over the pause before the fault, so
				// some meet a relay being killed.
				sleep(ctx, rand.N(2*w.o.Gap))
				if err := w.submitOne(ctx); err != nil {
					errOnce.Do(func() { subErr = err; cancel() })
					return
				}
			}
		}()
	}
	workers.Wait()
	if subErr != nil {
		cancel()
	}
	wg.Wait()
	switch {
	case faultErr != nil:
		return faultErr
	case subErr != nil:
		return subErr
	}
	return ctx.Err()
}

// submitOne gets one request acknowledged. A submit whose outcome stayed
// unknown (the run ended while it was being sent again) is counted.
func (w *world) submitOne(ctx context.Context) error {
	for {
		w.mu.Lock()
		w.payloadSeq++
		seq := w.payloadSeq
		w.mu.Unlock()
		var sub protocol.Submit
		if seq%2 == 0 {
			sub.Method = "sys.ping"
			sub.Params, _ = json.Marshal(map[string]any{"chaos": seq, "note": "echo me"})
		} else {
			pins := []string{"GPIO5", "GPIO6", "GPIO16", "GPIO17", "GPIO22"}
			levels := []string{"low", "high"}
			sub.Method = "gpio.write"
			sub.Params, _ = json.Marshal(map[string]any{"pin": pins[seq%len(pins)], "level": levels[(seq/len(pins))%2]})
		}
		sub.Timeout = protocol.Duration(w.o.Timeout)
		if seq%8 == 3 {
			// A few requests have deadlines an outage can outlast, so that
			// expiry happens under faults too.
			sub.Timeout = protocol.Duration(time.Duration(500+seq*37%2500) * time.Millisecond)
		}
		sub.Key = fmt.Sprintf("chaos-%d", seq)
		id, out, retries, resent, err := w.cl.submit(ctx, sub)
		w.mu.Lock()
		w.submitRetries += retries
		w.submitResent += resent
		switch {
		case err == nil && out == submitted:
			w.sent = append(w.sent, sent{id: id, method: sub.Method, params: sub.Params})
		case out == unknown:
			w.submitUnknown++
		}
		w.mu.Unlock()
		if err != nil || out == submitted {
			return err
		}
	}
}

// faults injects the faults one after another. Before each it waits for
// the device to be online again, so every fault hits a live session, then
// a random pause of up to twice Gap: short pauses land faults right in the
// redelivery after a reconnect.
func (w *world) faults(ctx context.Context, rep *Report, begun *atomic.Int64) error {
	order := slices.Clone(faultKinds)
	w.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i := 0; i < w.o.Faults; i++ {
		if err := w.reviveCrashed(ctx, rep); err != nil {
			return err
		}
		if !waitUntil(ctx, 20*time.Second, 10*time.Millisecond, func() bool { return w.cl.online(ctx) }) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rep.SlowRecoveries++
			w.logf("device not back online 20s after the last fault")
		}
		// Release this fault's share of the requests now, so the fault
		// lands somewhere in their submission and execution.
		begun.Add(1)
		sleep(ctx, time.Duration(w.rng.Int64N(int64(2*w.o.Gap))))
		kind := faultKinds[w.rng.IntN(len(faultKinds))]
		if i < len(order) {
			kind = order[i] // every kind at least once
		}
		w.logf("fault %d/%d: %s", i+1, w.o.Faults, kind)
		if err := w.inject(ctx, kind); err != nil {
			return err
		}
		rep.Faults++
		rep.FaultsByKind[kind]++
	}
	return w.reviveCrashed(ctx, rep)
}

// reviveCrashed restarts a relay or agent that exited by itself, which is
// a bug the report shows.
func (w *world) reviveCrashed(ctx context.Context, rep *Report) error {
	if w.agent.exited() {
		rep.UnexpectedExits = append(rep.UnexpectedExits, fmt.Sprintf("agent: %v", w.agent.err))
		w.logf("agent exited by itself: %v", w.agent.err)
		if err := w.startAgent(); err != nil {
			return err
		}
	}
	if w.relay.exited() {
		rep.UnexpectedExits = append(rep.UnexpectedExits, fmt.Sprintf("relay: %v", w.relay.err))
		w.logf("relay exited by itself: %v", w.relay.err)
		return w.startRelay(ctx)
	}
	return nil
}

func (w *world) inject(ctx context.Context, kind string) error {
	pause := func(maxMs int64) { sleep(ctx, time.Duration(w.rng.Int64N(maxMs+1))*time.Millisecond) }
	hold := func(t faultproxy.Toxics) {
		w.proxy.SetToxics(t)
		sleep(ctx, time.Duration(300+w.rng.IntN(1200))*time.Millisecond)
		w.proxy.SetToxics(faultproxy.Toxics{})
	}
	switch kind {
	case faultAgentKill:
		w.agent.kill()
		pause(300)
		return w.startAgent()
	case faultRelayKill:
		w.relay.kill()
		pause(300)
		return w.startRelay(ctx)
	case faultReset:
		w.proxy.Reset()
	case faultBlackHole:
		w.proxy.BlackHole()
	case faultLatency:
		hold(faultproxy.Toxics{
			Latency: time.Duration(20+w.rng.IntN(130)) * time.Millisecond,
			Jitter:  time.Duration(w.rng.IntN(20)+1) * time.Millisecond,
		})
	case faultSlow:
		hold(faultproxy.Toxics{SlowChunk: 1 + w.rng.IntN(64), SlowPause: time.Duration(1+w.rng.IntN(3)) * time.Millisecond})
	case faultPartial:
		hold(faultproxy.Toxics{Partial: true})
	default:
		return fmt.Errorf("chaos: unknown fault %q", kind)
	}
	return nil
}

// drain waits, without faults, until every acknowledged request is
// terminal or unknown to the relay, or Drain passes. It returns the last
// record seen for each id and the ids the relay answered 404 for; an id in
// neither could not be read at all.
func (w *world) drain(ctx context.Context, rep *Report) (map[string]protocol.Record, map[string]bool, error) {
	w.proxy.SetToxics(faultproxy.Toxics{})
	begin := time.Now()
	deadline := begin.Add(w.o.Drain)
	recs := make(map[string]protocol.Record, len(w.sent))
	gone := make(map[string]bool)
	pending := make([]string, 0, len(w.sent))
	for _, s := range w.sent {
		pending = append(pending, s.id)
	}
	for len(pending) > 0 && time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		wait := min(2*time.Second, time.Until(deadline))
		var mu sync.Mutex
		var next []string
		ids := make(chan string)
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range ids {
					rec, err := w.cl.get(ctx, id, wait)
					mu.Lock()
					switch {
					case errors.Is(err, errGone):
						gone[id] = true
						delete(recs, id)
					case err != nil:
						next = append(next, id)
					default:
						recs[id] = rec
						if !protocol.Terminal(rec.State) {
							next = append(next, id)
						}
					}
					mu.Unlock()
				}
			}()
		}
		for _, id := range pending {
			ids <- id
		}
		close(ids)
		wg.Wait()
		pending = next
		if len(pending) > 0 {
			w.logf("drain: %d requests not finished yet", len(pending))
			sleep(ctx, 100*time.Millisecond)
		}
	}
	rep.DrainTime = time.Since(begin)
	// A record is final once terminal; read everything once more after
	// the loop so a 404 seen during a restart is confirmed.
	for id := range gone {
		var err error
		for try := 0; try < 50; try++ {
			var rec protocol.Record
			if rec, err = w.cl.get(ctx, id, 0); err == nil {
				recs[id] = rec
				delete(gone, id)
				break
			}
			if errors.Is(err, errGone) {
				break
			}
			sleep(ctx, 100*time.Millisecond)
		}
	}
	return recs, gone, nil
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
