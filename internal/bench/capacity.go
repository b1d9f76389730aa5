package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// idle holds a relay (or nats-server) with a swarm of idle agents
// connected, for the capacity and storm figures.
type idle struct {
	srv, swarm *child
	data, addr string
	tokens     string
	n          int
}

// settle is how long a server is left alone before its memory is read.
const settle = 2 * time.Second

// rssAfterFree asks c for a full GC and FreeOSMemory and returns its RSS
// in bytes: the memory still in use, not garbage awaiting the scavenger.
func rssAfterFree(c *child) (int64, error) {
	if err := c.free(); err != nil {
		return 0, err
	}
	kb, err := procStatus(c.pid(), "VmRSS")
	return kb * 1024, err
}

// connectIdle starts a server and n idle agents (proto "tether" or
// "nats") and measures memory per connection and connection rate.
func (r *runner) connectIdle(ctx context.Context, proto string, n int) (*idle, error) {
	h := &idle{n: n}
	var err error
	if proto == "tether" {
		if h.data, err = r.dir(fmt.Sprintf("relay-%d", n)); err != nil {
			return nil, err
		}
		if h.tokens, _, err = makeDevices(h.data, n); err != nil {
			return nil, err
		}
		if h.srv, h.addr, err = r.startRelay(h.data, "127.0.0.1:0", n); err != nil {
			return nil, err
		}
	} else {
		if h.srv, err = r.start("nats"); err != nil {
			return nil, err
		}
		f, err := h.srv.expect("ready", 30*time.Second)
		if err != nil {
			return nil, err
		}
		h.addr = f[0]
	}
	time.Sleep(settle)
	before, err := rssAfterFree(h.srv)
	if err != nil {
		return nil, err
	}
	args := []string{"--proto", proto, "--n", strconv.Itoa(n)}
	if proto == "tether" {
		args = append(args, "--url", "ws://"+h.addr+"/v1/agent", "--tokens", h.tokens)
	} else {
		args = append(args, "--url", h.addr)
	}
	if h.swarm, err = r.start("swarm", args...); err != nil {
		return nil, err
	}
	up, err := h.swarm.expect("up", 10*time.Minute)
	if err != nil {
		return nil, err
	}
	ms, _ := strconv.ParseFloat(up[1], 64)
	attempts, _ := strconv.ParseFloat(up[2], 64)

	time.Sleep(settle)
	rawKB, err := procStatus(h.srv.pid(), "VmRSS")
	if err != nil {
		return nil, err
	}
	after, err := rssAfterFree(h.srv)
	if err != nil {
		return nil, err
	}
	// The connections held when memory was read, not those once up: an
	// agent that dropped meanwhile would otherwise be counted as held.
	held := n
	if f, err := h.swarm.ask("count", "count", 10*time.Second); err != nil {
		return nil, err
	} else if c, err := strconv.Atoi(f[0]); err == nil { // "count CONNECTED BACK"
		held = c
	}

	prefix, base := fmt.Sprintf("relay_%d", n), fmt.Sprintf("nats_%d", n)
	throttle := ""
	if proto == "tether" {
		throttle = "; relay admission control lifted for this figure (defaults: 500 upgrades/s, 10,000 sessions)"
	}
	if proto == "nats" {
		prefix, base = base, ""
	}
	perConn := &Figure{Name: prefix + "_mem_per_conn", Value: float64(after-before) / float64(max(held, 1)), Unit: "B",
		Note: "RSS growth of the server process per idle connection held, after a full GC and FreeOSMemory"}
	raw := &Figure{Name: prefix + "_mem_per_conn_raw", Value: float64(rawKB*1024-before) / float64(max(held, 1)), Unit: "B",
		Note: fmt.Sprintf("as _mem_per_conn, read %v after the last connect without forcing a GC (the relay keeps a 16 MiB heap floor, nats-server runs at the default GOGC)", settle)}
	rate := &Figure{Name: prefix + "_upgrades_per_s", Value: float64(n) / (ms / 1000), Unit: "conn/s",
		Note: "connections (TCP + upgrade + hello/welcome for tether, CONNECT/PING for NATS) from 256 concurrent dialers" + throttle}
	tries := &Figure{Name: prefix + "_connect_attempts_per_conn", Value: attempts / float64(n), Unit: "attempts"}
	if base != "" {
		perConn.Baseline, raw.Baseline, rate.Baseline, tries.Baseline = base+"_mem_per_conn", base+"_mem_per_conn_raw", base+"_upgrades_per_s", base+"_connect_attempts_per_conn"
		perConn.Budget, perConn.Max = "6144 B", 6144
		perConn.Baseline = base + "_mem_per_conn"
	} else {
		perConn.Baseline, raw.Baseline, rate.Baseline, tries.Baseline = perConn.Name, raw.Name, rate.Name, tries.Name
	}
	for _, f := range []*Figure{perConn, raw, rate, tries} {
		r.add(f)
	}
	if proto == "tether" {
		ok := held >= n
		r.add(&Figure{Name: prefix + "_connected", Value: float64(held), Unit: "agents", Budget: fmt.Sprintf(">=%d", n), Max: float64(n), Pass: &ok,
			Note: "idle agents held at once by one relay process, counted by the swarm when the relay's memory was read"})
	}
	return h, nil
}

func (r *runner) capacity(ctx context.Context) error {
	raiseNofile() // children inherit the limit this process can reach
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	// A count the limit forbids is replaced by the largest it allows, so
	// the run still shows how memory per agent holds up past the others.
	fit := capacityFit(lim.Max)
	var counts []int
	for _, n := range r.opts.Capacity {
		// One process holds every connection; it needs a descriptor each.
		if need := uint64(n) + capacitySpare; lim.Max < need {
			why := fmt.Sprintf("RLIMIT_NOFILE hard limit is %d and cannot be raised here; %d connections need about %d descriptors in one process", lim.Max, n, need)
			if fit > 0 && !slices.Contains(counts, fit) && !slices.Contains(r.opts.Capacity, fit) {
				why += fmt.Sprintf("; relay_%d, the most it allows, is measured instead", fit)
				counts = append(counts, fit)
			}
			r.skip(fmt.Sprintf("relay_%d", n), why)
			continue
		}
		counts = append(counts, n)
	}
	slices.Sort(counts)
	for _, n := range counts {
		// The NATS baseline first, so the relay's figures find it.
		h, err := r.connectIdle(ctx, "nats", n)
		if err != nil {
			return fmt.Errorf("nats %d: %w", n, err)
		}
		h.swarm.stop(60 * time.Second)
		h.srv.stop(60 * time.Second)
		if h, err = r.connectIdle(ctx, "tether", n); err != nil {
			return fmt.Errorf("relay %d: %w", n, err)
		}
		h.swarm.stop(60 * time.Second)
		h.srv.stop(60 * time.Second)
	}
	return nil
}

// capacitySpare is the descriptors a server needs besides one per
// connection: its data files, listeners, the runtime's own.
const capacitySpare = 1000

// capacityFit is the largest round thousand of idle agents a process
// whose descriptors are limited to max can hold, 0 if none.
func capacityFit(max uint64) int {
	if max < capacitySpare+1000 {
		return 0
	}
	return int((max-capacitySpare)/1000) * 1000
}

// storm connects Storm agents, restarts the relay (SIGTERM, then a new
// process on the same data and port) and times their return.
func (r *runner) storm(ctx context.Context) error {
	n := r.opts.Storm
	data, err := r.dir(fmt.Sprintf("storm-%d", n))
	if err != nil {
		return err
	}
	tokens, _, err := makeDevices(data, n)
	if err != nil {
		return err
	}
	// Both relays run with the defaults, admission control included (with
	// room for n sessions): the fleet fills at the admitted rate, and the
	// relay shutting down plans the fleet's return for a relay like itself.
	room := "--max-conns=" + strconv.Itoa(n)
	srv, addr, err := r.startRelay(data, "127.0.0.1:0", 0, room)
	if err != nil {
		return err
	}
	sw, err := r.start("swarm", "--proto", "tether", "--url", "ws://"+addr+"/v1/agent", "--tokens", tokens)
	if err != nil {
		return err
	}
	if _, err := sw.expect("up", 10*time.Minute); err != nil {
		return err
	}
	if _, err := sw.ask("mark", "marked", 10*time.Second); err != nil {
		return err
	}
	t0 := time.Now()
	srv.stop(60 * time.Second)
	stopped := time.Since(t0)
	if _, _, err = r.startRelay(data, addr, 0, room); err != nil {
		return err
	}
	downtime := time.Since(t0)

	limit := 120 * time.Second
	for time.Since(t0) < limit && ctx.Err() == nil {
		f, err := sw.ask("count", "count", 10*time.Second)
		if err != nil {
			return err
		}
		if back, _ := strconv.Atoi(f[1]); back >= n {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	f, err := sw.ask("report", "report", 10*time.Second)
	if err != nil {
		return err
	}
	back, _ := strconv.ParseFloat(f[0], 64)
	t99, _ := strconv.ParseFloat(f[1], 64)
	t100, _ := strconv.ParseFloat(f[2], 64)
	attempts, _ := strconv.ParseFloat(f[3], 64)
	if t99 < 0 {
		t99 = limit.Seconds() * 1000
	}
	if t100 < 0 {
		t100 = limit.Seconds() * 1000
	}
	note := fmt.Sprintf("%d agents, restarted relay with default admission control; from the SIGTERM to the old relay; it took %.1f s to stop and the new one was serving %.1f s after the SIGTERM", n, stopped.Seconds(), downtime.Seconds())
	r.add(&Figure{Name: "storm_back_99", Value: t99 / 1000, Unit: "s", Budget: "30 s", Max: 30, Note: note})
	r.add(&Figure{Name: "storm_back_100", Value: t100 / 1000, Unit: "s", Budget: "60 s", Max: 60, Note: note + fmt.Sprintf("; %d of %d back", int(back), n)})
	r.add(&Figure{Name: "storm_attempts_per_agent", Value: attempts / float64(n), Unit: "attempts", Budget: "2", Max: 2,
		Note: "connection attempts (successful or not) per agent from the restart until all were back"})
	r.add(&Figure{Name: "storm_relay_downtime", Value: downtime.Seconds(), Unit: "s", Baseline: "storm_back_100",
		Note: "from the SIGTERM until the new relay process listened; the ratio is the share of the recovery spent with no relay"})
	return nil
}
