package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/tetherhq/tether/internal/batchconn"
	"github.com/tetherhq/tether/protocol"
)

// pingParams is the sys.ping payload: exactly payloadSize bytes of JSON.
var pingParams = json.RawMessage(`{"p":"` + strings.Repeat("x", payloadSize-8) + `"}`)

// drive makes n calls from conc workers and returns each call's latency
// and the wall time of the whole batch.
func drive(ctx context.Context, n, conc int, call func(w int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var (
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t := time.Now()
				if err := call(w); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					next.Store(int64(n)) // stop everyone
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return lat, time.Since(start), firstErr
}

// quantile returns the q-quantile (nearest rank) of sorted.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// leg is one figure of a group that measure runs together: a peer's or
// tether's calls, at conc callers. base is the figure prefix it is
// compared with; withBudget applies the budgets (round trips: p50 ≤ 1.5×,
// p99 ≤ 2×; throughput: ≥ 0.7×).
type leg struct {
	name, base string
	conc       int
	withBudget bool
	note       string
	call       func(w int) error
	// heap, if set, reads the relay's heap counters: measure then adds
	// NAME_relay_alloc, NAME_relay_objects and NAME_relay_gc (see addHeap).
	heap func() (heapSample, error)
}

// rounds is how many turns measure takes over a group.
const rounds = 5

// measure makes n calls for every leg after a short warm-up, spread over
// rounds: each round runs a fifth of every leg's calls, one leg after the
// other. A small virtual machine's speed drifts by tens of per cent within
// a minute; measured in turn, a figure and its baseline see the same
// drift, where measured one after the other the drift would show in their
// ratio. Legs come baselines first. rate false adds NAME_p50, NAME_p99
// and NAME_p999 in microseconds; rate true adds NAME in requests per
// second. Both add NAME_cpu.
func (r *runner) measure(ctx context.Context, n int, rate bool, legs []leg) error {
	for _, l := range legs {
		most := 500
		if rate {
			most = 2000
		}
		if _, _, err := drive(ctx, min(max(n/10, l.conc), most), l.conc, l.call); err != nil {
			return fmt.Errorf("%s warm-up: %w", l.name, err)
		}
	}
	lat := make([][]time.Duration, len(legs))
	took := make([]time.Duration, len(legs))
	used := make([]cpuSample, len(legs))
	grew := make([]heapSample, len(legs))
	readCost := make([]heapSample, len(legs)) // what a read of the counters allocates
	for i, l := range legs {
		if l.heap == nil {
			continue
		}
		a, err1 := l.heap()
		b, err2 := l.heap()
		if err := errors.Join(err1, err2); err != nil {
			fmt.Fprintf(r.out, "# %s: relay heap counters not read: %v\n", l.name, err)
			legs[i].heap = nil
			continue
		}
		readCost[i] = heapSample{alloc: b.alloc - a.alloc, objects: b.objects - a.objects}
	}
	for round := range rounds {
		m := n / rounds
		if round == rounds-1 {
			m = n - (rounds-1)*(n/rounds)
		}
		for i, l := range legs {
			var h0 heapSample
			if l.heap != nil {
				var err error
				if h0, err = l.heap(); err != nil {
					return fmt.Errorf("%s: %w", l.name, err)
				}
			}
			before := r.sampleCPU()
			ls, elapsed, err := drive(ctx, m, l.conc, l.call)
			if err != nil {
				return fmt.Errorf("%s: %w", l.name, err)
			}
			used[i] = used[i].plus(r.sampleCPU().since(before))
			lat[i] = append(lat[i], ls...)
			took[i] += elapsed
			if l.heap != nil {
				h1, err := l.heap()
				if err != nil {
					return fmt.Errorf("%s: %w", l.name, err)
				}
				grew[i].alloc += max(h1.alloc-h0.alloc-readCost[i].alloc, 0)
				grew[i].objects += max(h1.objects-h0.objects-readCost[i].objects, 0)
				grew[i].gcs += h1.gcs - h0.gcs
			}
		}
	}
	for i, l := range legs {
		if rate {
			f := &Figure{Name: l.name, Value: math.Round(float64(n) / took[i].Seconds()), Unit: "req/s", Baseline: l.base, Note: l.note}
			if l.base == "" {
				f.Baseline = l.name
			}
			if l.withBudget {
				f.Budget, f.Max = ">=x0.7", 0.7
			}
			r.add(f)
		} else {
			r.addLatency(l.name, l.base, lat[i], l.withBudget, l.note)
		}
		r.addCPU(l.name, l.base, used[i], n)
		if l.heap != nil {
			r.addHeap(l.name, grew[i], n)
		}
	}
	return nil
}

// addLatency adds NAME_p50, NAME_p99 and NAME_p999 of lat, in
// microseconds, as measure describes them.
func (r *runner) addLatency(name, base string, lat []time.Duration, withBudget bool, note string) {
	slices.Sort(lat)
	for _, q := range []struct {
		suffix string
		q      float64
		budget string
		max    float64
	}{{"p50", 0.50, "x1.5", 1.5}, {"p99", 0.99, "x2", 2}, {"p999", 0.999, "", 0}} {
		f := &Figure{Name: name + "_" + q.suffix, Value: float64(quantile(lat, q.q).Nanoseconds()) / 1e3, Unit: "us", Note: note}
		f.Baseline = base + "_" + q.suffix
		if base == "" {
			f.Baseline = f.Name
		}
		if withBudget && q.budget != "" {
			f.Budget, f.Max = q.budget, q.max
		}
		r.add(f)
	}
}

// diskSync measures what one durable write costs on the filesystem of the
// relay's data directory (the work directory): a small record written
// into a file filled in advance, then fdatasync, as the relay's request
// log commits a submit. It is on the path of every durable round trip,
// and the figures compare it with NATS's whole round trip: disk_sync
// with one write right after the other, the disk's own latency, and
// disk_sync_paced with a pause before each, as a sequential caller's
// commits come, which on a virtual machine adds the wake-up of an idle
// CPU when the disk answers.
func (r *runner) diskSync(ctx context.Context) error {
	dir, err := r.dir("disk")
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "sync"))
	if err != nil {
		return err
	}
	defer f.Close()
	const record = 512
	n := min(r.opts.RoundTrips, 2000)
	if _, err := f.Write(make([]byte, n*record)); err != nil {
		return fmt.Errorf("disk_sync: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("disk_sync: %w", err)
	}
	buf := bytes.Repeat([]byte{'x'}, record)
	var off int64
	sync := func() error {
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
		off = (off + record) % int64(n*record) // stay inside the file written in advance
		return unix.Fdatasync(int(f.Fd()))
	}
	for range min(n/10, 200) { // warm-up
		if err := sync(); err != nil {
			return fmt.Errorf("disk_sync: %w", err)
		}
	}
	for _, run := range []struct {
		name, note string
		pause      time.Duration
	}{{"disk_sync", noteDisk, 0}, {"disk_sync_paced", noteDiskPaced, diskPause}} {
		lat := make([]time.Duration, n)
		for i := range lat {
			if err := ctx.Err(); err != nil {
				return err
			}
			if run.pause > 0 {
				// time.Sleep would wait for the runtime's next poll, a
				// millisecond or more on an otherwise idle process.
				ts := unix.NsecToTimespec(run.pause.Nanoseconds())
				unix.Nanosleep(&ts, nil)
			}
			t := time.Now()
			if err := sync(); err != nil {
				return fmt.Errorf("%s: %w", run.name, err)
			}
			lat[i] = time.Since(t)
		}
		r.addLatency(run.name, "nats_seq", lat, false, run.note)
	}
	return nil
}

// diskPause is disk_sync_paced's pause before each write: about what a
// sequential round trip spends between two commits.
const diskPause = 250 * time.Microsecond

// tcpPing is the loopback floor: conc connections to the echo process,
// each doing payloadSize-byte ping-pongs.
func (r *runner) tcpPing(conc int) (func(w int) error, func(), error) {
	p, err := r.start("pong")
	if err != nil {
		return nil, nil, err
	}
	f, err := p.expect("ready", 30*time.Second)
	if err != nil {
		return nil, nil, err
	}
	conns := make([]net.Conn, conc)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	for i := range conns {
		if conns[i], err = net.Dial("tcp", f[0]); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	bufs := make([][]byte, conc)
	for i := range bufs {
		bufs[i] = make([]byte, payloadSize)
	}
	call := func(w int) error {
		if _, err := conns[w].Write(bufs[w]); err != nil {
			return err
		}
		_, err := io.ReadFull(conns[w], bufs[w])
		return err
	}
	return call, closeAll, nil
}

// natsSetup starts nats-server and the responders: conns connections
// answering ping.<device i> for i from first, each with subs
// subscriptions. It returns a connected client.
func (r *runner) natsSetup(first, conns, subs int) (*nats.Conn, error) {
	ns, err := r.start("nats")
	if err != nil {
		return nil, err
	}
	f, err := ns.expect("ready", 30*time.Second)
	if err != nil {
		return nil, err
	}
	url := "nats://" + f[0]
	if err := r.natsResponders(url, first, conns, subs); err != nil {
		return nil, err
	}
	return nats.Connect(url, nats.NoReconnect())
}

func (r *runner) natsResponders(url string, first, conns, subs int) error {
	resp, err := r.start("responders", "--nats", url, "--first", strconv.Itoa(first), "--conns", strconv.Itoa(conns), "--subs", strconv.Itoa(subs))
	if err != nil {
		return err
	}
	_, err = resp.expect("ready", 60*time.Second)
	return err
}

func natsCall(nc *nats.Conn, subject func(w int) string) func(w int) error {
	return func(w int) error {
		m, err := nc.Request(subject(w), pingParams, 30*time.Second)
		if err != nil {
			return err
		}
		if len(m.Data) != payloadSize {
			return fmt.Errorf("nats: echo of %d bytes", len(m.Data))
		}
		return nil
	}
}

// tether is a relay process with full agents connected, and the clients
// that call them.
type tether struct {
	addr, key string
	hc        *http.Client // for everything but the measured REST calls

	mu   sync.Mutex
	rest []*restConn // the REST callers' connections; guarded by mu
}

// tetherSetup starts a relay with the given agent groups (count and
// credits each) as full agents with durable journals, one agents process
// per group, and waits until every device is online. Devices are numbered
// across the groups in order.
func (r *runner) tetherSetup(groups ...[2]int) (*tether, error) {
	total := 0
	for _, g := range groups {
		total += g[0]
	}
	data, err := r.dir("relay")
	if err != nil {
		return nil, err
	}
	tokens, key, err := makeDevices(data, total)
	if err != nil {
		return nil, err
	}
	toks, err := readTokens(tokens)
	if err != nil {
		return nil, err
	}
	_, addr, err := r.startRelay(data, "127.0.0.1:0", 0)
	if err != nil {
		return nil, err
	}
	t := &tether{addr: addr, key: key, hc: newHTTPClient()}
	first := 0
	for gi, g := range groups {
		var b strings.Builder
		for _, tk := range toks[first : first+g[0]] {
			fmt.Fprintf(&b, "%s %s\n", tk.device, tk.token)
		}
		first += g[0]
		state, err := r.dir(fmt.Sprintf("agents%d", gi))
		if err != nil {
			return nil, err
		}
		tf := state + "/tokens"
		if err := os.WriteFile(tf, []byte(b.String()), 0o600); err != nil {
			return nil, err
		}
		a, err := r.start("agents", "--relay", "ws://"+addr, "--tokens", tf, "--state", state, "--credits", strconv.Itoa(g[1]), "--pprof", os.Getenv("TETHER_BENCH_AGENTS_PPROF"))
		if err != nil {
			return nil, err
		}
		if _, err := a.expect("ready", 60*time.Second); err != nil {
			return nil, err
		}
	}
	return t, t.waitOnline(total, 60*time.Second)
}

func (t *tether) close() {
	t.hc.CloseIdleConnections()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, rc := range t.rest {
		rc.close()
	}
}

// newHTTPClient keeps a connection per concurrent caller alive.
func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 1024, DisableCompression: true, IdleConnTimeout: time.Minute,
	}}
}

// waitOnline polls GET /v1/devices until n devices are online.
func (t *tether) waitOnline(n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		req, _ := http.NewRequest("GET", "http://"+t.addr+"/v1/devices", nil)
		req.Header.Set("Authorization", "Bearer "+t.key)
		resp, err := t.hc.Do(req)
		online := 0
		if err == nil {
			var body struct {
				Devices []protocol.DeviceInfo `json:"devices"`
			}
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			for _, d := range body.Devices {
				if d.Online {
					online++
				}
			}
		}
		if online >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %d of %d agents online after %v", online, n, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingSubmit is the request of the round trip figures: sys.ping, which
// touches no hardware, so the agent does not journal it.
var pingSubmit = protocol.Submit{Method: "sys.ping", Params: pingParams, Timeout: protocol.Duration(30 * time.Second)}

// gpioSubmit is a hardware action: the agent journals it (fsynced) before
// and after it runs.
var gpioSubmit = protocol.Submit{Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17","level":"high"}`), Timeout: protocol.Duration(30 * time.Second)}

// restCall submits sys.ping and long-polls for the result in the same
// call (?wait=): one HTTP round trip per request.
func (t *tether) restCall(device func(w int) string) func(w int) error {
	return t.restCallWith(pingSubmit, device)
}

// restCallWith is restCall for another request. Every caller has its own
// keep-alive connection, on which it writes the request as bytes and reads
// the answer with net/http's ReadResponse. Go's http.Client runs two
// goroutines per connection and hands every request and response between
// them; on these 2 cores that cost ~43 µs of CPU per call, several times
// NATS's whole requester, and it weighed on every process in the run.
func (t *tether) restCallWith(sub protocol.Submit, device func(w int) string) func(w int) error {
	body, _ := json.Marshal(sub)
	var (
		mu    sync.Mutex
		conns = map[int]*restConn{}
	)
	return func(w int) error {
		mu.Lock()
		rc := conns[w]
		if rc == nil {
			rc = &restConn{t: t}
			conns[w] = rc
			t.mu.Lock()
			t.rest = append(t.rest, rc)
			t.mu.Unlock()
		}
		mu.Unlock()
		b, status, err := rc.post("/v1/devices/"+device(w)+"/requests?wait=30s", body)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("submit: %d %s", status, b)
		}
		var rec struct {
			State string `json:"state"`
		}
		if err := json.Unmarshal(b, &rec); err != nil || rec.State != protocol.StateSucceeded {
			return fmt.Errorf("submit: %s", b)
		}
		return nil
	}
}

// restConn is one caller's keep-alive HTTP/1.1 connection to the relay.
type restConn struct {
	t   *tether
	mu  sync.Mutex // one call at a time, and close
	c   net.Conn   // nil until the first call, and after a failure
	br  *bufio.Reader
	req []byte // the request being written
}

// post sends a POST of body to path and returns the answer's body and
// status. A failed call drops the connection; the next one dials again.
func (rc *restConn) post(path string, body []byte) ([]byte, int, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.c == nil {
		c, err := net.Dial("tcp", rc.t.addr)
		if err != nil {
			return nil, 0, err
		}
		rc.c, rc.br = c, bufio.NewReader(c)
	}
	rc.req = fmt.Appendf(rc.req[:0], "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, rc.t.addr, rc.t.key, len(body))
	rc.req = append(rc.req, body...)
	b, status, err := rc.exchange()
	if err != nil && rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
	return b, status, err
}

func (rc *restConn) exchange() ([]byte, int, error) {
	if _, err := rc.c.Write(rc.req); err != nil {
		return nil, 0, err
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		return nil, 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.Close {
		rc.c.Close() // the relay ends the connection: dial again next time
		rc.c = nil
	}
	return b, resp.StatusCode, err
}

func (rc *restConn) close() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.c != nil {
		rc.c.Close()
		rc.c = nil
	}
}

// dialWSOrSkip dials t's client WebSocket. On a relay that does not serve
// one it records the figures named name as skipped and returns nil, nil.
func (r *runner) dialWSOrSkip(t *tether, name string) (*wsClient, error) {
	ws, err := t.dialWS()
	if errors.Is(err, errNoClientWS) {
		r.skip(name, err.Error())
		return nil, nil
	}
	return ws, err
}

// errNoClientWS means the relay does not serve /v1/client.
var errNoClientWS = errors.New("the relay does not serve the client WebSocket (/v1/client)")

// wsClient is a /v1/client connection with calls multiplexed by ref: one
// reader goroutine hands each result to its caller, and one writer sends
// the calls queued meanwhile in one write, as nats.go's flusher does for
// its requesters.
type wsClient struct {
	conn  *websocket.Conn
	batch *batchconn.Conn // conn's connection underneath, for the writer
	ref   atomic.Uint64
	done  chan struct{} // the reader returned
	kick  chan struct{} // calls were queued

	wmu   sync.Mutex
	queue [][]byte // frames for the writer; guarded by wmu
	werr  error    // the writer's failure; guarded by wmu

	mu      sync.Mutex
	waiting map[string]chan error // by ref; guarded by mu
}

func (t *tether) dialWS() (*wsClient, error) {
	var batch *batchconn.Conn
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		batch = batchconn.New(c)
		return batch, nil
	}}
	hdr := http.Header{"Authorization": {"Bearer " + t.key}}
	conn, resp, err := d.Dial("ws://"+t.addr+protocol.ClientPath, hdr)
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed) {
			return nil, errNoClientWS
		}
		return nil, fmt.Errorf("client ws: %w", err)
	}
	c := &wsClient{conn: conn, batch: batch, done: make(chan struct{}), kick: make(chan struct{}, 1), waiting: make(map[string]chan error)}
	go c.read()
	go c.write()
	return c, nil
}

func (c *wsClient) read() {
	defer close(c.done)
	var buf bytes.Buffer
	for {
		_, r, err := c.conn.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			c.mu.Lock()
			for ref, ch := range c.waiting {
				ch <- err
				delete(c.waiting, ref)
			}
			c.mu.Unlock()
			return
		}
		// Only a result or an error ends a call. The frame is decoded as
		// tether's Go clients decode it (protocol.DecodePush), the whole
		// request record included.
		b := buf.Bytes()
		if bytes.HasPrefix(b, acceptedPrefix) {
			continue
		}
		m, err := protocol.DecodePush(b, 0)
		if err != nil {
			continue
		}
		var ref string
		var res error
		switch m := m.(type) {
		case *protocol.ClientResult:
			ref = m.Ref
			if m.State != protocol.StateSucceeded {
				res = fmt.Errorf("client ws: request %s %s", m.ID, m.State)
			}
		case *protocol.ClientError:
			ref = m.Ref
			res = fmt.Errorf("client ws: %s: %s", m.Code, m.Message)
		default:
			continue // presence
		}
		c.mu.Lock()
		if ch := c.waiting[ref]; ch != nil {
			ch <- res
			delete(c.waiting, ref)
		}
		c.mu.Unlock()
	}
}

var acceptedPrefix = []byte(`{"type":"` + protocol.TypeAccepted + `"`)

// write sends the queued frames, all of them in one write, until the
// connection fails or closes.
func (c *wsClient) write() {
	var frames [][]byte
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.wmu.Lock()
		frames, c.queue = c.queue, frames[:0]
		c.wmu.Unlock()
		c.batch.Hold()
		var err error
		for _, f := range frames {
			if err = c.conn.WriteMessage(websocket.TextMessage, f); err != nil {
				break
			}
		}
		if ferr := c.batch.Flush(time.Now().Add(10 * time.Second)); err == nil {
			err = ferr
		}
		clear(frames)
		if err != nil {
			c.wmu.Lock()
			c.werr = err
			c.wmu.Unlock()
			c.conn.Close() // the reader fails every waiting call
			return
		}
	}
}

func (c *wsClient) call(device string) error {
	ref := strconv.FormatUint(c.ref.Add(1), 10)
	ch := make(chan error, 1)
	c.mu.Lock()
	c.waiting[ref] = ch
	c.mu.Unlock()
	b, _ := protocol.Encode(&protocol.ClientCall{Ref: ref, Device: device, Method: "sys.ping", Params: pingParams, Timeout: protocol.Duration(30 * time.Second)})
	c.wmu.Lock()
	err := c.werr
	if err == nil {
		c.queue = append(c.queue, b)
	}
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-ch:
		return err
	case <-c.done:
		return errors.New("client ws: connection closed")
	}
}

func (c *wsClient) close() {
	c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
	}
	c.conn.Close()
	<-c.done
}

const (
	noteTCP       = "raw TCP ping-pong between two processes, one connection per caller: the loopback floor"
	noteNATS      = "NATS request/reply through nats-server (own process) to a responder process; not durable"
	noteREST      = "durable: POST ?wait= to a relay process, full agent process (simulated board, journal); sys.ping touches no hardware, so the agent does not journal it; on the path: the submit's append to the request log and its fdatasync (overlapping the delivery), not the delivery's or the result's"
	noteGPIO      = "as rt_rest_seq, with gpio.write (a hardware action): the agent also fsyncs its journal before and after it runs"
	noteDisk      = "one 512-byte write into a file written in advance, then fdatasync, in the relay's data filesystem: what the relay's request log does to commit a submit, on the path of every durable round trip; compared with NATS's whole round trip"
	noteDiskPaced = "as disk_sync, each write after a pause of at least 250 us (nanosleep), about the pace of a sequential caller's commits"
	noteWS        = "durable, as the REST figure, over one /v1/client WebSocket multiplexing the callers"
	noteTputAg    = "durable; callers spread evenly over the agents, two per agent"
	noteTputC     = "durable; one agent with that many credits"
)

func (r *runner) roundTrips(ctx context.Context) error {
	c := r.opts.Concurrency
	cs := fmt.Sprintf("c%d", c)
	n := r.opts.RoundTrips
	// Loopback floor.
	tcp1, closeTCP1, err := r.tcpPing(1)
	if err != nil {
		return err
	}
	defer closeTCP1()
	tcpC, closeTCPC, err := r.tcpPing(c)
	if err != nil {
		return err
	}
	defer closeTCPC()

	// NATS: one responder with as many subscriptions as the agent has
	// credits.
	nc, err := r.natsSetup(0, 1, r.opts.Credits)
	if err != nil {
		return err
	}
	defer nc.Close()
	subj := func(int) string { return "ping." + deviceID(0) }

	// tether: one full agent with the same credits.
	t, err := r.tetherSetup([2]int{1, r.opts.Credits})
	if err != nil {
		return err
	}
	defer t.close()
	dev := func(int) string { return deviceID(0) }
	ws, err := r.dialWSOrSkip(t, "rt_ws")
	if err != nil {
		return err
	}
	seq := []leg{
		{name: "tcp_seq", conc: 1, note: noteTCP, call: tcp1},
		{name: "nats_seq", base: "tcp_seq", conc: 1, note: noteNATS, call: natsCall(nc, subj)},
		{name: "rt_rest_seq", base: "nats_seq", conc: 1, withBudget: true, note: noteREST, call: t.restCall(dev), heap: t.relayHeap},
		{name: "rt_rest_gpio_seq", base: "nats_seq", conc: 1, note: noteGPIO, call: t.restCallWith(gpioSubmit, dev)},
	}
	conc := []leg{
		{name: "tcp_" + cs, conc: c, note: noteTCP, call: tcpC},
		{name: "nats_" + cs, base: "tcp_" + cs, conc: c, note: noteNATS, call: natsCall(nc, subj)},
		{name: "rt_rest_" + cs, base: "nats_" + cs, conc: c, withBudget: true, note: noteREST, call: t.restCall(dev), heap: t.relayHeap},
	}
	if ws != nil {
		defer ws.close()
		wsCall := func(int) error { return ws.call(deviceID(0)) }
		seq = append(seq, leg{name: "rt_ws_seq", base: "nats_seq", conc: 1, withBudget: true, note: noteWS, call: wsCall, heap: t.relayHeap})
		conc = append(conc, leg{name: "rt_ws_" + cs, base: "nats_" + cs, conc: c, withBudget: true, note: noteWS, call: wsCall, heap: t.relayHeap})
	}
	if err := r.measure(ctx, n, false, seq); err != nil {
		return err
	}
	if err := r.diskSync(ctx); err != nil {
		return err
	}
	return r.measure(ctx, n, false, conc)
}

func (r *runner) throughput(ctx context.Context) error {
	na, cr := r.opts.Agents, r.opts.Credits
	concA, concC := 2*na, 2*cr
	nameA := fmt.Sprintf("tput_%dagents", na)
	nameC := fmt.Sprintf("tput_1agent_%dcredits", cr)

	tcp, closeTCP, err := r.tcpPing(concA)
	if err != nil {
		return err
	}
	defer closeTCP()
	tcpC, closeTCPC, err := r.tcpPing(concC)
	if err != nil {
		return err
	}
	defer closeTCPC()

	// NATS: na responders with one subscription each, and one more with
	// cr subscriptions.
	nc, err := r.natsSetup(0, na, 1)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := r.natsResponders(nc.ConnectedUrl(), na, 1, cr); err != nil {
		return err
	}
	spread := func(w int) string { return deviceID(w % na) }
	single := func(int) string { return deviceID(na) }

	t, err := r.tetherSetup([2]int{na, 1}, [2]int{1, cr})
	if err != nil {
		return err
	}
	defer t.close()
	// The same calls over one /v1/client WebSocket too, as NATS's
	// requesters share one connection.
	ws, err := r.dialWSOrSkip(t, "tput_ws")
	if err != nil {
		return err
	}
	spreadLegs := []leg{
		{name: "tcp_" + nameA, conc: concA, note: noteTCP + fmt.Sprintf("; %d connections", concA), call: tcp},
		{name: "nats_" + nameA, base: "tcp_" + nameA, conc: concA, note: noteNATS, call: natsCall(nc, func(w int) string { return "ping." + spread(w) })},
		{name: nameA + "_rest", base: "nats_" + nameA, conc: concA, withBudget: true, note: noteTputAg, call: t.restCall(spread), heap: t.relayHeap},
	}
	singleLegs := []leg{
		{name: "tcp_" + nameC, conc: concC, note: noteTCP + fmt.Sprintf("; %d connections", concC), call: tcpC},
		{name: "nats_" + nameC, base: "tcp_" + nameC, conc: concC, note: noteNATS, call: natsCall(nc, func(w int) string { return "ping." + single(w) })},
		{name: nameC + "_rest", base: "nats_" + nameC, conc: concC, withBudget: true, note: noteTputC, call: t.restCall(single), heap: t.relayHeap},
	}
	if ws != nil {
		defer ws.close()
		spreadLegs = append(spreadLegs, leg{name: nameA + "_ws", base: "nats_" + nameA, conc: concA, withBudget: true,
			note: noteTputAg + "; one /v1/client WebSocket for all callers", call: func(w int) error { return ws.call(spread(w)) }, heap: t.relayHeap})
		singleLegs = append(singleLegs, leg{name: nameC + "_ws", base: "nats_" + nameC, conc: concC, withBudget: true,
			note: noteTputC + "; one /v1/client WebSocket for all callers", call: func(w int) error { return ws.call(single(w)) }, heap: t.relayHeap})
	}
	if err := r.measure(ctx, r.opts.Requests, true, spreadLegs); err != nil {
		return err
	}
	return r.measure(ctx, r.opts.Requests, true, singleLegs)
}
