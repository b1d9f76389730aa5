package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// TestLifecycleStress drives a real relay with several devices, scripted
// agents and clients (REST and /v1/client) through random submits, pulls,
// results (some twice, some for ids never sent), cancels, abrupt
// disconnects, relay crashes and clean restarts, and checks the request
// lifecycle's invariants (SPEC §5–§7, CLIENT.md):
//
//   - every request a client got an id for ends in exactly one terminal
//     state, the same however it is read (GET, long-poll, /v1/client
//     result, cancel's answer) and across restarts and crashes; only a
//     result told before its commit may be forgotten by a crash (and is
//     then recorded again, the same, from the agent's outbox);
//   - a recorded result is the first one its device's agent sent for the
//     id, never one sent for another device's request;
//   - no session is sent more requests than the credits it granted;
//   - a request is not delivered after it was reported terminal;
//   - attempts never exceed MaxAttempts;
//   - expired is never reported for a request that was delivered, nor
//     decided after a crash for a request recovered from it.
//
// STRESS_SEEDS and STRESS_OPS make a longer run; STRESS_SEED runs one seed.
func TestLifecycleStress(t *testing.T) {
	seeds := 4
	if testing.Short() {
		seeds = 2
	}
	runSeeds(t, "STRESS", seeds, 250, runLifecycleStress)
}

// runSeeds runs a seeded stress test as one subtest per seed: seeds seeds
// of ops operations each, from seed 1. The environment overrides them:
// PREFIX_SEEDS and PREFIX_OPS, and PREFIX_SEED runs that one seed alone.
func runSeeds(t *testing.T, prefix string, seeds, ops int, run func(t *testing.T, seed int64, ops int)) {
	if v, err := strconv.Atoi(os.Getenv(prefix + "_SEEDS")); err == nil {
		seeds = v
	}
	if v, err := strconv.Atoi(os.Getenv(prefix + "_OPS")); err == nil {
		ops = v
	}
	first := int64(1)
	if v, err := strconv.ParseInt(os.Getenv(prefix+"_SEED"), 10, 64); err == nil {
		first, seeds = v, 1
	}
	for seed := first; seed < first+int64(seeds); seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { run(t, seed, ops) })
	}
}

const stressMaxAttempts = 3

// sreq is what the test knows of one request.
type sreq struct {
	id, dev   string
	gotAt     time.Time // when a client got its id
	delivered bool      // some agent received a request frame for it
	firstTag  string    // the first result its device's agent sent
	term      *sobs     // the first terminal state seen
	termAt    time.Time // when it was seen
	termSrc   string
}

// sobs is a terminal state as seen by a client.
type sobs struct {
	state, code, msg, result string
	tag                      string // the agent result's tag, "" for a relay verdict
	finished                 time.Time
}

func (o *sobs) String() string {
	return fmt.Sprintf("%s/%s %q result=%s", o.state, o.code, o.msg, o.result)
}

func (o *sobs) same(p *sobs) bool {
	return o.state == p.state && o.code == p.code && o.msg == p.msg && o.result == p.result
}

type stressWorld struct {
	t   *testing.T
	e   *env
	rng *rand.Rand
	hc  *http.Client

	mu        sync.Mutex
	base      string // the relay's current URL
	crashes   []time.Time
	restarts  []time.Time // clean ones
	reqs      map[string]*sreq
	wrongTags map[string]string // tag → id of another device's request
	// pre holds what agents did with ids no client has been told of yet
	// (a call's delivery overlaps its commit).
	pre        map[string]*sreq
	violations []string
	nextTag    int

	polls sync.WaitGroup
}

func (w *stressWorld) violate(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.violateLocked(format, args...)
}

func (w *stressWorld) violateLocked(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(w.violations) < 50 {
		w.violations = append(w.violations, msg)
	}
}

func (w *stressWorld) tag() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextTag++
	return fmt.Sprintf("t%d", w.nextTag)
}

// track notes an id a client got.
func (w *stressWorld) track(id, dev string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reqs[id] == nil {
		w.reqs[id] = w.newReqLocked(id, dev)
	}
}

func (w *stressWorld) newReqLocked(id, dev string) *sreq {
	r := &sreq{id: id, dev: dev, gotAt: time.Now()}
	if p := w.pre[id]; p != nil {
		delete(w.pre, id)
		if p.dev != dev {
			if p.delivered {
				w.violateLocked("%s of device %s delivered to device %s", id, dev, p.dev)
			}
			if p.firstTag != "" {
				w.wrongTags[p.firstTag] = p.dev
			}
		} else {
			r.delivered, r.firstTag = p.delivered, p.firstTag
		}
	}
	return r
}

func (w *stressWorld) preLocked(id, dev string) *sreq {
	p := w.pre[id]
	if p == nil {
		p = &sreq{id: id, dev: dev}
		w.pre[id] = p
	}
	return p
}

func tagOf(rec *protocol.Record) string {
	if len(rec.Result) > 0 {
		var v struct{ Tag string }
		if json.Unmarshal(rec.Result, &v) == nil {
			return v.Tag
		}
	}
	if rec.Error != nil && strings.HasPrefix(rec.Error.Message, "tag:") {
		return strings.TrimPrefix(rec.Error.Message, "tag:")
	}
	return ""
}

func compactJSON(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// observe checks a record a client was given; asked is when the client
// asked (a record computed after that moment).
func (w *stressWorld) observe(src string, rec protocol.Record, asked time.Time) {
	if rec.ID == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.reqs[rec.ID]
	if r == nil {
		r = w.newReqLocked(rec.ID, rec.Device)
		w.reqs[rec.ID] = r
	}
	if rec.Attempts > stressMaxAttempts {
		w.violateLocked("%s: %s has %d attempts, above MaxAttempts %d", src, rec.ID, rec.Attempts, stressMaxAttempts)
	}
	if !protocol.Terminal(rec.State) {
		if r.term != nil && asked.After(r.termAt) && !w.crashAfterLocked(r.termAt) {
			w.violateLocked("%s: %s reported %s after it was seen %s (by %s)", src, rec.ID, rec.State, r.term, r.termSrc)
		}
		return
	}
	o := &sobs{state: rec.State, result: compactJSON(rec.Result), tag: tagOf(&rec)}
	if rec.Error != nil {
		o.code, o.msg = rec.Error.Code, rec.Error.Message
	}
	if rec.Finished != nil {
		o.finished = *rec.Finished
	}
	if r.term == nil {
		r.term, r.termAt, r.termSrc = o, time.Now(), src
		w.checkTermLocked(src, r, o)
		return
	}
	if !o.same(r.term) {
		// A result told before its commit may be lost by a crash, and is
		// then recorded again from the agent's outbox (the same one).
		if r.term.tag == "" || !w.crashAfterLocked(r.termAt) {
			w.violateLocked("%s: %s ended %s, but was seen %s before (by %s)", src, rec.ID, o, r.term, r.termSrc)
		}
		w.checkTermLocked(src, r, o)
	}
}

func (w *stressWorld) crashAfterLocked(t time.Time) bool {
	for _, c := range w.crashes {
		if c.After(t) {
			return true
		}
	}
	return false
}

func (w *stressWorld) checkTermLocked(src string, r *sreq, o *sobs) {
	if o.tag != "" {
		if dev, ok := w.wrongTags[o.tag]; ok {
			w.violateLocked("%s: %s recorded result %s that an agent sent for it from device %s", src, r.id, o.tag, dev)
		} else if o.tag != r.firstTag {
			w.violateLocked("%s: %s recorded result %s, but its agent's first result was %q", src, r.id, o.tag, r.firstTag)
		}
	}
	if o.state == protocol.StateExpired && o.code == protocol.CodeExpired {
		if r.delivered {
			w.violateLocked("%s: %s reported expired, but it was delivered", src, r.id)
		}
		for _, c := range w.crashes {
			if r.gotAt.Before(c) && o.finished.After(c) {
				clean := slices.ContainsFunc(w.restarts, func(t time.Time) bool { return t.After(c) && t.Before(o.finished) })
				w.violateLocked("%s: %s expired at %v after a crash at %v that recovered it (it may have run); clean restart in between: %v",
					src, r.id, o.finished, c, clean)
			}
		}
	}
}

// onDelivery checks a request frame received by an agent of dev on a
// session granted pulls credits that has now received got requests.
func (w *stressWorld) onDelivery(dev string, req *protocol.Request, got, pulls int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if got > pulls {
		w.violateLocked("agent %s: request %d (%s) on a session that granted %d credits", dev, got, req.ID, pulls)
	}
	if req.Attempt < 1 || req.Attempt > stressMaxAttempts {
		w.violateLocked("agent %s: %s delivered with attempt %d", dev, req.ID, req.Attempt)
	}
	r := w.reqs[req.ID]
	if r == nil {
		// A submit whose answer is still on its way.
		w.preLocked(req.ID, dev).delivered = true
		return
	}
	r.delivered = true
	if r.dev != dev {
		w.violateLocked("%s of device %s delivered to device %s", req.ID, r.dev, dev)
	}
	if r.term != nil && time.Since(r.termAt) > 250*time.Millisecond &&
		(r.term.tag == "" || !w.crashAfterLocked(r.termAt)) {
		w.violateLocked("agent %s: %s delivered (attempt %d) %v after it was seen %s (by %s)",
			dev, req.ID, req.Attempt, time.Since(r.termAt), r.term, r.termSrc)
	}
}

// noteSent records a result an agent of dev sends for id.
func (w *stressWorld) noteSent(dev, id, tag string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.reqs[id]
	if r == nil {
		if p := w.preLocked(id, dev); p.firstTag == "" {
			p.firstTag = tag
		}
		return
	}
	if r.dev != dev {
		w.wrongTags[tag] = dev
		return
	}
	if r.firstTag == "" {
		r.firstTag = tag
	}
}

func (w *stressWorld) url() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.base
}

func (w *stressWorld) http(method, path string, body any) (int, []byte, time.Time, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	asked := time.Now()
	req, err := http.NewRequest(method, w.url()+path, r)
	if err != nil {
		return 0, nil, asked, err
	}
	req.Header.Set("Authorization", "Bearer "+w.e.key)
	resp, err := w.hc.Do(req)
	if err != nil {
		return 0, nil, asked, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, asked, err
}

// ids returns the tracked ids, sorted, optionally of one device.
func (w *stressWorld) ids(dev string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for id, r := range w.reqs {
		if dev == "" || r.dev == dev {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// sagent is a scripted agent with a durable journal and outbox: its
// process outlives its connections.
type sagent struct {
	w     *stressWorld
	dev   string
	token string

	mu       sync.Mutex
	conn     *websocket.Conn
	sess     *sagentSess
	running  map[string]bool             // delivered, no result yet
	canceled map[string]bool             // a cancel came for it
	journal  map[string]*protocol.Result // the first result per id
	outbox   map[string]bool             // results not acked yet
	dupDue   int                         // credits to grant back (deliveries of running ids)
	resend   []string                    // deliveries of finished ids
}

type sagentSess struct {
	pulls, got int
	done       chan struct{}
}

func (a *sagent) connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conn != nil
}

// dial connects and says hello, listing running ids if list, then sends
// the outbox.
func (a *sagent) dial(list bool, extra []string) {
	a.drop()
	h := http.Header{"Authorization": {"Bearer " + a.token}}
	d := websocket.Dialer{Subprotocols: []string{protocol.Version}, HandshakeTimeout: 2 * time.Second}
	conn, resp, err := d.Dial("ws"+strings.TrimPrefix(a.w.url(), "http")+"/v1/agent", h)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return
	}
	s := &sagentSess{done: make(chan struct{})}
	a.mu.Lock()
	a.conn, a.sess = conn, s
	a.dupDue, a.resend = 0, nil
	var running []string
	if list {
		for id := range a.running {
			running = append(running, id)
		}
		slices.Sort(running)
	}
	running = append(running, extra...)
	var out []*protocol.Result
	for id := range a.outbox {
		out = append(out, a.journal[id])
	}
	slices.SortFunc(out, func(x, y *protocol.Result) int { return strings.Compare(x.ID, y.ID) })
	a.mu.Unlock()
	go a.read(conn, s)
	a.send(&protocol.Hello{Agent: "stress/1", Board: "mock", Methods: []string{"m"}, Running: running})
	for _, r := range out {
		a.send(r)
	}
}

func (a *sagent) read(conn *websocket.Conn, s *sagentSess) {
	defer close(s.done)
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return
		}
		m, err := protocol.Decode(b, 1<<20)
		if err != nil {
			a.w.violate("agent %s: undecodable frame %s: %v", a.dev, b, err)
			continue
		}
		a.mu.Lock()
		switch m := m.(type) {
		case *protocol.Request:
			s.got++
			a.w.onDelivery(a.dev, m, s.got, s.pulls)
			switch {
			case a.journal[m.ID] != nil:
				if a.sess == s {
					a.resend = append(a.resend, m.ID)
				}
			case a.running[m.ID]:
				if a.sess == s {
					a.dupDue++
				}
			default:
				a.running[m.ID] = true
			}
		case *protocol.Cancel:
			a.canceled[m.ID] = true
		case *protocol.Ack:
			for _, id := range m.IDs {
				delete(a.outbox, id)
			}
		}
		a.mu.Unlock()
	}
}

// send writes m on the current connection; a failure drops it.
func (a *sagent) send(m protocol.Message) bool {
	a.mu.Lock()
	conn := a.conn
	if conn == nil {
		a.mu.Unlock()
		return false
	}
	if p, ok := m.(*protocol.Pull); ok {
		a.sess.pulls += p.N // counted before the relay can see it
	}
	a.mu.Unlock()
	b, err := protocol.Encode(m)
	if err != nil {
		a.w.t.Fatal(err)
	}
	conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return false
	}
	return true
}

// drop closes the connection abruptly and waits for the reader.
func (a *sagent) drop() {
	a.mu.Lock()
	conn, s := a.conn, a.sess
	a.conn, a.sess = nil, nil
	a.mu.Unlock()
	if conn != nil {
		conn.Close()
		<-s.done
	}
}

// result makes a result for id (recording it as the first if it is) and
// sends it.
func (a *sagent) result(id string, first bool) {
	tag := a.w.tag()
	res := &protocol.Result{ID: id, RunMs: 1}
	a.mu.Lock()
	canceled := a.canceled[id]
	a.mu.Unlock()
	switch r := a.w.rng.Intn(4); {
	case canceled && r < 3:
		res.State = protocol.StateCanceled
		res.Error = &protocol.Failure{Code: protocol.CodeCanceled, Message: "tag:" + tag}
	case r < 2:
		res.State = protocol.StateSucceeded
		res.Value = json.RawMessage(`{"tag":"` + tag + `"}`)
	default:
		res.State = protocol.StateFailed
		res.Error = &protocol.Failure{Code: protocol.CodeHWError, Message: "tag:" + tag}
	}
	a.mu.Lock()
	if first {
		if a.journal[id] != nil {
			a.mu.Unlock()
			return
		}
		a.journal[id] = res
		a.outbox[id] = true
		delete(a.running, id)
	}
	a.mu.Unlock()
	// Noted before it is sent: the relay may record it at once.
	a.w.noteSent(a.dev, id, tag)
	a.send(res)
}

// service answers deliveries of finished requests from the journal and
// grants back the credits of deliveries of running ones.
func (a *sagent) service() {
	a.mu.Lock()
	resend, dup := a.resend, a.dupDue
	a.resend, a.dupDue = nil, 0
	var out []*protocol.Result
	for _, id := range resend {
		out = append(out, a.journal[id])
	}
	a.mu.Unlock()
	for _, r := range out {
		a.send(r)
	}
	if dup > 0 {
		a.send(&protocol.Pull{N: dup})
	}
}

func (a *sagent) pick(m map[string]bool) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for id := range m {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return ""
	}
	slices.Sort(ids)
	return ids[a.w.rng.Intn(len(ids))]
}

// sclient is a /v1/client connection.
type sclient struct {
	w    *stressWorld
	conn *websocket.Conn
	done chan struct{}

	mu       sync.Mutex
	calls    map[string]string    // ref → device
	asked    map[string]time.Time // ref → when sent
	counted  map[string]bool      // call refs counted in asks
	asks     map[string]int       // id → calls, gets and cancels sent for it
	results  map[string]int       // id → results received
	accepted map[string]bool      // ids accepted
}

// answered counts the ask of a call's ref the first time an answer names
// its id.
func (c *sclient) answeredLocked(ref, id string) {
	if strings.HasPrefix(ref, "c") && !c.counted[ref] {
		c.counted[ref] = true
		c.asks[id]++
	}
}

func (w *stressWorld) dialClient() *sclient {
	d := websocket.Dialer{HandshakeTimeout: 2 * time.Second}
	conn, resp, err := d.Dial("ws"+strings.TrimPrefix(w.url(), "http")+protocol.ClientPath, keyHeader(w.e.key))
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil
	}
	c := &sclient{w: w, conn: conn, done: make(chan struct{}), calls: map[string]string{}, asked: map[string]time.Time{},
		counted: map[string]bool{}, asks: map[string]int{}, results: map[string]int{}, accepted: map[string]bool{}}
	go c.read()
	return c
}

func (c *sclient) read() {
	defer close(c.done)
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		m, err := protocol.DecodePush(b, 0)
		if err != nil {
			c.w.violate("client: undecodable frame %s: %v", b, err)
			continue
		}
		switch m := m.(type) {
		case *protocol.ClientAccepted:
			c.mu.Lock()
			dev, asked := c.calls[m.Ref], c.asked[m.Ref]
			c.answeredLocked(m.Ref, m.ID)
			c.accepted[m.ID] = true
			c.mu.Unlock()
			if dev != "" {
				c.w.track(m.ID, dev)
			}
			if m.Request.ID != m.ID || protocol.Terminal(m.Request.State) {
				c.w.violate("client: accepted %s with request %s in state %s", m.ID, m.Request.ID, m.Request.State)
			}
			c.w.observe("ws accepted "+m.Ref, m.Request, asked)
		case *protocol.ClientResult:
			c.mu.Lock()
			dev, asked := c.calls[m.Ref], c.asked[m.Ref]
			c.answeredLocked(m.Ref, m.ID)
			c.results[m.ID]++
			if c.results[m.ID] > c.asks[m.ID] {
				c.w.violate("client: %d results for %s on one connection, asked %d times", c.results[m.ID], m.ID, c.asks[m.ID])
			}
			c.mu.Unlock()
			if dev != "" {
				c.w.track(m.ID, dev)
			}
			if m.Request.ID != m.ID || m.State != m.Request.State || !protocol.Terminal(m.State) {
				c.w.violate("client: result %s state %s with request %s %s", m.ID, m.State, m.Request.ID, m.Request.State)
			}
			c.w.observe("ws result "+m.Ref, m.Request, asked)
		}
	}
}

func (c *sclient) send(ref string, dev string, v map[string]any) {
	c.mu.Lock()
	c.calls[ref] = dev
	c.asked[ref] = time.Now()
	c.mu.Unlock()
	v["ref"] = ref
	b, _ := json.Marshal(v)
	c.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.conn.WriteMessage(websocket.TextMessage, b)
}

func (c *sclient) close() {
	c.conn.Close()
	<-c.done
}

func runLifecycleStress(t *testing.T, seed int64, nops int) {
	e := newEnv(t, func(c *Config) {
		c.MaxAttempts = stressMaxAttempts
		c.DefaultTimeout = 2 * time.Second
		c.AdmitRate, c.AdmitBurst = 1e6, 1e6
	})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	w := &stressWorld{
		t: t, e: e, rng: rand.New(rand.NewSource(seed)),
		hc:        &http.Client{Transport: tr, Timeout: 3 * time.Second},
		base:      e.ts.URL,
		reqs:      map[string]*sreq{},
		wrongTags: map[string]string{},
		pre:       map[string]*sreq{},
	}
	devs := []string{"dev1", "dev2", "dev3"}
	agents := map[string]*sagent{}
	for _, d := range devs {
		tok := e.token
		if d != "dev1" {
			var err error
			if tok, err = AddDevice(e.cfg.DataDir, d); err != nil {
				t.Fatal(err)
			}
		}
		agents[d] = &sagent{w: w, dev: d, token: tok, running: map[string]bool{}, canceled: map[string]bool{},
			journal: map[string]*protocol.Result{}, outbox: map[string]bool{}}
	}
	client := w.dialClient()
	defer func() {
		w.polls.Wait()
		for _, a := range agents {
			a.drop()
		}
		if client != nil {
			client.close()
		}
	}()

	timeouts := []time.Duration{time.Millisecond, 5 * time.Millisecond, 30 * time.Millisecond, 150 * time.Millisecond, 600 * time.Millisecond, 0}
	refN := 0
	randID := func(dev string) string {
		ids := w.ids(dev)
		if len(ids) == 0 {
			return ""
		}
		// Favour recent ones: they are the live ones.
		n := min(len(ids), 30)
		return ids[len(ids)-1-w.rng.Intn(n)]
	}
	longPoll := func(id, wait string) {
		w.polls.Add(1)
		go func() {
			defer w.polls.Done()
			st, b, asked, err := w.http("GET", "/v1/requests/"+id+"?wait="+wait, nil)
			if err == nil && (st == http.StatusOK || st == http.StatusAccepted) {
				var rec protocol.Record
				if json.Unmarshal(b, &rec) == nil {
					w.observe("long-poll", rec, asked)
				}
			}
		}()
	}
	restartRelay := func(crash bool) {
		if client != nil {
			client.close()
			client = nil
		}
		w.polls.Wait()
		if crash {
			w.mu.Lock()
			w.crashes = append(w.crashes, time.Now())
			w.mu.Unlock()
			e.crash()
		} else {
			e.restart()
			w.mu.Lock()
			w.restarts = append(w.restarts, time.Now())
			w.mu.Unlock()
		}
		// The crash time bounds from above what the relay decided before it.
		w.mu.Lock()
		if crash {
			w.crashes[len(w.crashes)-1] = time.Now()
		}
		w.base = e.ts.URL
		w.mu.Unlock()
		for _, a := range agents {
			a.drop()
		}
		client = w.dialClient()
	}

	for op := 0; op < nops; op++ {
		dev := devs[w.rng.Intn(len(devs))]
		a := agents[dev]
		a.service()
		switch r := w.rng.Intn(100); {
		case r < 14: // REST submit
			sub := protocol.Submit{Method: "m", Timeout: protocol.Duration(timeouts[w.rng.Intn(len(timeouts))]), Idempotent: w.rng.Intn(2) == 0}
			path := "/v1/devices/" + dev + "/requests"
			if w.rng.Intn(4) == 0 {
				path += "?wait=20ms"
			}
			st, b, asked, err := w.http("POST", path, sub)
			if err == nil && (st == http.StatusAccepted || st == http.StatusOK) {
				var rec protocol.Record
				if json.Unmarshal(b, &rec) == nil {
					w.track(rec.ID, dev)
					w.observe("submit", rec, asked)
				}
			}
		case r < 26: // /v1/client call
			if client == nil {
				client = w.dialClient()
				continue
			}
			refN++
			call := map[string]any{"type": "call", "device": dev, "method": "m", "idempotent": w.rng.Intn(2) == 0}
			if to := timeouts[w.rng.Intn(len(timeouts))]; to > 0 {
				call["timeout"] = to.Milliseconds()
			}
			client.send(fmt.Sprint("c", refN), dev, call)
		case r < 33: // REST cancel
			id := randID("")
			if id == "" {
				continue
			}
			st, b, asked, err := w.http("DELETE", "/v1/requests/"+id, nil)
			if err != nil {
				continue
			}
			var rec protocol.Record
			switch st {
			case http.StatusOK, http.StatusAccepted:
				json.Unmarshal(b, &rec)
			case http.StatusConflict:
				var v struct{ Request protocol.Record }
				json.Unmarshal(b, &v)
				rec = v.Request
				if !protocol.Terminal(rec.State) {
					w.violate("cancel %s: 409 with a %s request", id, rec.State)
				}
			}
			w.observe(fmt.Sprint("cancel ", st), rec, asked)
		case r < 37: // /v1/client cancel or get
			id := randID("")
			if id == "" || client == nil {
				continue
			}
			refN++
			typ := "cancel"
			if w.rng.Intn(2) == 0 {
				typ = "get"
			}
			client.mu.Lock()
			client.asks[id]++
			client.mu.Unlock()
			client.send(fmt.Sprint("x", refN), "", map[string]any{"type": typ, "id": id})
		case r < 43: // GET or long-poll
			id := randID("")
			if id == "" {
				continue
			}
			longPoll(id, []string{"1ms", "30ms", "300ms"}[w.rng.Intn(3)])
		case r < 50: // agent (re)connects
			if !a.connected() || w.rng.Intn(3) == 0 {
				var extra []string
				if w.rng.Intn(5) == 0 {
					// Ids it does not run: another device's, or a queued one.
					if id := randID(devs[w.rng.Intn(len(devs))]); id != "" {
						extra = append(extra, id)
					}
				}
				a.dial(w.rng.Intn(3) != 0, extra)
				if w.rng.Intn(2) == 0 {
					a.send(&protocol.Pull{N: 1 + w.rng.Intn(3)})
				}
			}
		case r < 62: // pull
			if a.connected() {
				a.send(&protocol.Pull{N: 1 + w.rng.Intn(2)})
			}
		case r < 80: // answer a running request
			if id := a.pick(a.running); id != "" {
				a.result(id, true)
				if w.rng.Intn(2) == 0 {
					a.send(&protocol.Pull{N: 1})
				}
			}
		case r < 84: // answer again, differently
			a.mu.Lock()
			var ids []string
			for id := range a.journal {
				ids = append(ids, id)
			}
			a.mu.Unlock()
			if len(ids) > 0 {
				slices.Sort(ids)
				a.result(ids[w.rng.Intn(len(ids))], false)
			}
		case r < 87: // a result for an id it was never sent
			other := devs[w.rng.Intn(len(devs))]
			if id := randID(other); id != "" {
				a.mu.Lock()
				known := a.running[id] || a.journal[id] != nil
				a.mu.Unlock()
				if !known {
					a.result(id, other == dev)
				}
			}
		case r < 93: // abrupt disconnect
			a.drop()
		case r < 95: // sleep a while: deadlines pass
			time.Sleep(time.Duration(w.rng.Intn(60)) * time.Millisecond)
		case r < 97:
			if w.rng.Intn(2) == 0 {
				restartRelay(w.rng.Intn(3) != 0)
			}
		default:
			time.Sleep(time.Duration(w.rng.Intn(3)) * time.Millisecond)
		}
	}

	// Drain: every agent online, answering everything, until every
	// request has ended and every result is acked.
	for _, a := range agents {
		a.dial(true, nil)
		a.send(&protocol.Pull{N: 1000})
	}
	deadline := time.Now().Add(3 * waitLimit)
	for {
		pending := 0
		for _, d := range devs {
			a := agents[d]
			if !a.connected() {
				a.dial(true, nil)
				a.send(&protocol.Pull{N: 1000})
			}
			a.service()
			for id := a.pick(a.running); id != ""; id = a.pick(a.running) {
				a.result(id, true)
			}
			a.mu.Lock()
			pending += len(a.outbox)
			a.mu.Unlock()
		}
		for _, id := range w.ids("") {
			w.mu.Lock()
			done := w.reqs[id].term != nil
			w.mu.Unlock()
			if !done {
				pending++
				if st, b, asked, err := w.http("GET", "/v1/requests/"+id, nil); err == nil && st == http.StatusOK {
					var rec protocol.Record
					if json.Unmarshal(b, &rec) == nil {
						w.observe("drain", rec, asked)
					}
				}
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			var stuck []string
			for _, id := range w.ids("") {
				w.mu.Lock()
				open := w.reqs[id].term == nil
				w.mu.Unlock()
				if open {
					_, b, _, _ := w.http("GET", "/v1/requests/"+id, nil)
					stuck = append(stuck, string(b))
				}
			}
			w.violate("seed %d: %d requests or acks still pending after the drain: %s", seed, pending, strings.Join(stuck[:min(len(stuck), 5)], "\n"))
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Every request the client connection followed got its result.
	if client != nil {
		waitUntil := time.Now().Add(waitLimit)
		for {
			client.mu.Lock()
			var missing []string
			for id := range client.accepted {
				if client.results[id] == 0 {
					missing = append(missing, id)
				}
			}
			client.mu.Unlock()
			if len(missing) == 0 {
				break
			}
			if time.Now().After(waitUntil) {
				w.violate("client: no result for followed requests %v", missing)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// The final states survive a clean restart and a crash.
	check := func(phase string) {
		for _, id := range w.ids("") {
			st, b, asked, err := w.http("GET", "/v1/requests/"+id, nil)
			if err != nil || st != http.StatusOK {
				w.violate("%s: GET %s: %d %v %s", phase, id, st, err, b)
				continue
			}
			var rec protocol.Record
			json.Unmarshal(b, &rec)
			if !protocol.Terminal(rec.State) {
				w.violate("%s: %s is %s", phase, id, rec.State)
			}
			w.observe(phase, rec, asked)
		}
	}
	check("final")
	for _, a := range agents {
		a.drop()
	}
	restartRelay(false)
	check("after restart")
	restartRelay(true)
	check("after crash")

	w.mu.Lock()
	defer w.mu.Unlock()
	n, delivered := len(w.reqs), 0
	states := map[string]int{}
	for _, r := range w.reqs {
		if r.delivered {
			delivered++
		}
		if r.term != nil {
			states[r.term.state+"/"+r.term.code]++
		}
	}
	t.Logf("seed %d: %d requests (%d delivered), %d crashes, ends %v", seed, n, delivered, len(w.crashes), states)
	for _, v := range w.violations {
		t.Error(v)
	}
}
