package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/internal/faultproxy"
	"github.com/tetherhq/tether/protocol"
)

// TestEventsStress runs real agents (with and without a state directory)
// against a real relay and, at random moments, emits events (one by one,
// concurrently, while disconnected), cuts the agent's connection,
// restarts the agent (clean, crash, lost state directory), restarts or
// crashes the relay, and reconnects clients following the device's events
// over REST (long-poll with after=) and /v1/client (subscribe with after).
//
// Checked (SPEC §8, CLIENT.md): every event whose Emit returned nil is
// stored exactly once with its name and data, except those SPEC §8 and the
// agent's docs leave to be lost (no state directory: unacknowledged events
// at a restart or crash; a lost state directory: the old one's
// unacknowledged events);
// followers see strictly increasing seqs and no event twice, and miss
// nothing across their reconnects; the store keeps EventsKept events.
//
// EVSTRESS_SEEDS, EVSTRESS_SEED and EVSTRESS_OPS tune the run.
func TestEventsStress(t *testing.T) {
	runSeeds(t, "EVSTRESS", 6, 60, runEventsStress)
}

// evLineage is one state directory's history (copied on a crash); an
// agent without one has a lineage per process.
type evLineage struct {
	lost bool // started on an empty directory that replaced a used one
}

type evIncarnation struct {
	a      *agent.Agent
	proxy  *faultproxy.Proxy
	cancel context.CancelFunc
	done   chan struct{}
	dir    string
	lin    *evLineage
	emits  sync.WaitGroup
}

type evEmit struct {
	id      int
	name    string
	data    string
	must    bool // must be stored
	err     error
	why     string
	inc     int
	nostate bool
	conn    bool // the agent was connected when Emit was called
	lost    bool // its lineage started on a lost state dir
	op      int
}

func runEventsStress(t *testing.T, seed int64, ops int) {
	rng := rand.New(rand.NewSource(seed))
	noState := seed%3 == 0
	e := newEnv(t, func(c *Config) { c.EventsKept = 1 << 20 })
	var addrMu sync.Mutex
	addr := strings.TrimPrefix(e.ts.URL, "http://")
	target := func() string { addrMu.Lock(); defer addrMu.Unlock(); return addr }
	base := func() string { return "http://" + target() }

	var mu sync.Mutex // guards emits, inc
	var emits []*evEmit
	var inc *evIncarnation
	incN := 0
	dirN := 0
	newDir := func() string {
		dirN++
		d := filepath.Join(t.TempDir(), fmt.Sprint("state", dirN))
		os.MkdirAll(d, 0o700)
		return d
	}

	startInc := func(dir string, lin *evLineage) *evIncarnation {
		p, err := faultproxy.ListenFunc("127.0.0.1:0", target, uint64(seed))
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(agent.Config{
			Relay:          "ws://" + p.Addr(),
			Token:          e.token,
			StateDir:       dir,
			BackoffInitial: 5 * time.Millisecond,
			BackoffMax:     50 * time.Millisecond,
			HealthyAfter:   50 * time.Millisecond,
			ShutdownGrace:  300 * time.Millisecond,
			PingPeriod:     200 * time.Millisecond,
			Logger:         slog.New(slog.DiscardHandler),
		}, nopExec{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		in := &evIncarnation{a: a, proxy: p, cancel: cancel, done: make(chan struct{}), dir: dir, lin: lin}
		go func() {
			defer close(in.done)
			a.Run(ctx)
		}()
		incN++
		return in
	}
	// forgetUnstored marks the events not stored by now as ones that may
	// be lost.
	forgetUnstored := func(why string) {
		stored, err := e.srv.Events("dev1", 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, ev := range stored {
			have[string(ev.Data)] = true
		}
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range emits {
			if ev.must && !have[ev.data] {
				ev.must, ev.why = false, why
			}
		}
	}
	// stopInc ends an incarnation; crash first cuts it off the relay so
	// that it flushes nothing.
	stopInc := func(in *evIncarnation, crash bool) {
		in.emits.Wait()
		if crash {
			in.proxy.Close()
		}
		in.cancel()
		<-in.done
		in.a.Close()
		in.proxy.Close()
		if in.dir == "" {
			time.Sleep(20 * time.Millisecond) // frames in flight land
			forgetUnstored("maybe: agent without state dir restarted")
		}
	}

	dir := ""
	if !noState {
		dir = newDir()
	}
	inc = startInc(dir, &evLineage{})
	nextID := 0
	curOp := 0

	emit := func(in *evIncarnation, my int) {
		mu.Lock()
		nextID++
		id := nextID
		ev := &evEmit{id: id, name: fmt.Sprintf("ev%d", id%3), data: fmt.Sprintf(`{"id":%d}`, id), inc: my, nostate: in.dir == ""}
		ev.must = true
		ev.conn, ev.lost, ev.op = in.a.Status().Connected, in.lin.lost, curOp
		emits = append(emits, ev)
		mu.Unlock()
		err := in.a.Emit(ev.name, json.RawMessage(ev.data))
		mu.Lock()
		ev.err = err
		if err != nil {
			ev.must, ev.why = false, "Emit failed: "+err.Error()
		}
		mu.Unlock()
	}

	// Followers.
	fctx, fstop := context.WithCancel(context.Background())
	var fwg sync.WaitGroup
	type seen struct {
		seq  uint64
		name string
		data string
	}
	type follower struct {
		name  string
		mu    sync.Mutex
		got   []seen
		errs  []string
		last  uint64
		recon chan struct{}
	}
	rest := &follower{name: "rest", recon: make(chan struct{}, 1)}
	wsf := &follower{name: "ws", recon: make(chan struct{}, 1)}
	record := func(f *follower, s seen) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if s.seq <= f.last {
			f.errs = append(f.errs, fmt.Sprintf("%s: seq %d after %d", f.name, s.seq, f.last))
		}
		f.got = append(f.got, s)
		f.last = s.seq
	}
	fwg.Add(2)
	go func() { // REST long-poll
		defer fwg.Done()
		for fctx.Err() == nil {
			rest.mu.Lock()
			after := rest.last
			rest.mu.Unlock()
			req, _ := http.NewRequestWithContext(fctx, "GET", fmt.Sprintf("%s/v1/devices/dev1/events?after=%d&wait=200ms&limit=%d", base(), after, 1+rng2(seed)), nil)
			req.Header.Set("Authorization", "Bearer "+e.key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			var body struct {
				Events []protocol.EventRecord `json:"events"`
			}
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			for _, ev := range body.Events {
				record(rest, seen{ev.Seq, ev.Name, string(ev.Data)})
			}
		}
	}()
	go func() { // /v1/client subscribe with after
		defer fwg.Done()
		for fctx.Err() == nil {
			u := "ws://" + target() + "/v1/client"
			h := http.Header{"Authorization": {"Bearer " + e.key}}
			d := websocket.Dialer{HandshakeTimeout: time.Second}
			c, resp, err := d.DialContext(fctx, u, h)
			if resp != nil && resp.Body != nil {
				resp.Body.Close()
			}
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			wsf.mu.Lock()
			after := wsf.last
			wsf.mu.Unlock()
			sub := map[string]any{"type": "subscribe", "device": "dev1", "after": after}
			b, _ := json.Marshal(sub)
			c.WriteMessage(websocket.TextMessage, b)
			stop := make(chan struct{})
			go func() {
				select {
				case <-fctx.Done():
				case <-wsf.recon:
				case <-stop:
				}
				c.Close()
			}()
			for {
				_, msg, err := c.ReadMessage()
				if err != nil {
					break
				}
				var m struct {
					Type string          `json:"type"`
					Seq  *uint64         `json:"seq"`
					Name string          `json:"name"`
					Data json.RawMessage `json:"data"`
				}
				json.Unmarshal(msg, &m)
				switch m.Type {
				case "event":
					record(wsf, seen{*m.Seq, m.Name, string(m.Data)})
				case "presence":
					if m.Seq != nil {
						wsf.mu.Lock()
						if *m.Seq != wsf.last {
							wsf.errs = append(wsf.errs, fmt.Sprintf("ws: first presence seq %d, subscribed after %d", *m.Seq, wsf.last))
						}
						wsf.mu.Unlock()
					}
				}
			}
			close(stop)
			c.Close()
		}
	}()

	var log []string
	logf := func(f string, a ...any) { log = append(log, fmt.Sprintf("%d: ", len(log))+fmt.Sprintf(f, a...)) }
	for op := 0; op < ops; op++ {
		mu.Lock()
		curOp = op
		mu.Unlock()
		switch k := rng.Intn(100); {
		case k < 30:
			n := 1 + rng.Intn(4)
			logf("emit %d", n)
			for i := 0; i < n; i++ {
				emit(inc, incN)
			}
		case k < 45:
			n := 2 + rng.Intn(6)
			logf("emit %d concurrently", n)
			in, my := inc, incN
			for i := 0; i < n; i++ {
				in.emits.Add(1)
				go func() {
					defer in.emits.Done()
					emit(in, my)
				}()
			}
		case k < 55:
			logf("cut")
			inc.proxy.Reset()
		case k < 62:
			logf("agent restart")
			stopInc(inc, false)
			old := inc
			lin := old.lin
			if old.dir == "" {
				lin = &evLineage{}
			}
			inc = startInc(old.dir, lin)
		case k < 70:
			logf("agent crash")
			inc.emits.Wait()
			old := inc
			// Cut off before its state directory is copied, as a crash
			// stops both at once: left connected, it could have its
			// first welcome after the copy and send its fresh events
			// moved, which the copy holds unmoved, so the next agent
			// would move and send them again.
			old.proxy.Close()
			nd := old.dir
			lin := old.lin
			if old.dir != "" {
				nd = newDir()
				copyDir(t, old.dir, nd)
			} else {
				lin = &evLineage{}
			}
			stopInc(old, true)
			inc = startInc(nd, lin)
		case k < 74:
			logf("agent loses its state dir")
			stopInc(inc, true)
			nd := ""
			if !noState {
				nd = newDir()
			}
			// The old one's unacknowledged events are gone with it.
			forgetUnstored("maybe: its state dir was lost")
			inc = startInc(nd, &evLineage{lost: true})
		case k < 82:
			crash := rng.Intn(2) == 0
			logf("relay restart crash=%v", crash)
			addrMu.Lock()
			if crash {
				e.crash()
			} else {
				e.restart()
			}
			addr = strings.TrimPrefix(e.ts.URL, "http://")
			addrMu.Unlock()
		case k < 88:
			logf("client ws reconnect")
			select {
			case wsf.recon <- struct{}{}:
			default:
			}
		default:
			d := time.Duration(rng.Intn(30)) * time.Millisecond
			logf("sleep %v", d)
			time.Sleep(d)
		}
		time.Sleep(time.Duration(rng.Intn(5)) * time.Millisecond)
	}
	inc.emits.Wait()
	// Drain: the agent empties its outbox.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := inc.a.Status()
		if st.Connected && st.Outbox == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("agent never drained: %+v", st)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stored, err := e.srv.Events("dev1", 0, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	var lastSeq uint64
	if len(stored) > 0 {
		lastSeq = stored[len(stored)-1].Seq
	}
	// Followers catch up.
	deadline = time.Now().Add(5 * time.Second)
	for _, f := range []*follower{rest, wsf} {
		for {
			f.mu.Lock()
			l := f.last
			f.mu.Unlock()
			if l >= lastSeq || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	fstop()
	fwg.Wait()
	stopInc(inc, false)

	fail := func(f string, a ...any) {
		t.Errorf(f, a...)
	}
	// No-state incarnations other than the last lose what they owed.
	mu.Lock()
	defer mu.Unlock()
	byData := map[string][]protocol.EventRecord{}
	for _, ev := range stored {
		byData[string(ev.Data)] = append(byData[string(ev.Data)], ev)
	}
	for d, evs := range byData {
		if len(evs) > 1 {
			fail("event %s stored %d times: %+v", d, len(evs), evs)
		}
	}
	for _, ev := range emits {
		got := byData[ev.data]
		if len(got) == 0 {
			if ev.must {
				fail("event %d (%s %s, agent #%d, op %d, connected %v, lost dir %v) Emit returned nil but the relay never stored it", ev.id, ev.name, ev.data, ev.inc, ev.op, ev.conn, ev.lost)
			}
			continue
		}
		if got[0].Name != ev.name {
			fail("event %s stored as %q, emitted as %q", ev.data, got[0].Name, ev.name)
		}
	}
	// Retention is by seq (putEvent drops events more than EventsKept
	// seqs behind the newest): a gap in the numbering would keep fewer
	// than EventsKept events.
	for i := 1; i < len(stored); i++ {
		if stored[i].Seq != stored[i-1].Seq+1 {
			fail("seq gap: %d then %d (fewer than EventsKept events would be kept)", stored[i-1].Seq, stored[i].Seq)
		}
	}
	storedSet := map[uint64]protocol.EventRecord{}
	for _, ev := range stored {
		storedSet[ev.Seq] = ev
	}
	for _, f := range []*follower{rest, wsf} {
		for _, s := range f.errs {
			fail("%s", s)
		}
		have := map[uint64]bool{}
		for _, s := range f.got {
			if have[s.seq] {
				fail("%s saw seq %d twice", f.name, s.seq)
			}
			have[s.seq] = true
			if st, ok := storedSet[s.seq]; !ok || st.Name != s.name || string(st.Data) != s.data {
				fail("%s saw seq %d %s %s, store has %+v", f.name, s.seq, s.name, s.data, st)
			}
		}
		for _, ev := range stored {
			if !have[ev.Seq] {
				fail("%s never saw stored seq %d %s", f.name, ev.Seq, ev.Data)
			}
		}
	}
	nmust := 0
	for _, ev := range emits {
		if ev.must {
			nmust++
		}
	}
	t.Logf("seed %d noState=%v: %d emits, %d must, %d stored, rest saw %d, ws saw %d, %d agents", seed, noState, len(emits), nmust, len(stored), len(rest.got), len(wsf.got), incN)
	if t.Failed() {
		t.Logf("seed %d noState=%v ops:\n%s", seed, noState, strings.Join(log, "\n"))
	}
}

func rng2(seed int64) int { return int(seed%5) * 3 }

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range ents {
		if en.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, en.Name()))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, en.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
