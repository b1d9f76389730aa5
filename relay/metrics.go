package relay

import (
	"bufio"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tetherhq/tether/protocol"
)

// Prometheus metrics of the relay, served at GET /metrics.
//
// Every Server has a registry of its own, so that tests running many
// servers in one process do not collide and nothing leaks into the global
// default registry. Three kinds of metric live here:
//
//   - State gauges (devices online, queue sizes, sessions) are not kept up
//     to date by the code that changes the state. stateCollector reads the
//     hub under its lock when Prometheus scrapes, so there is no
//     bookkeeping on the request path and nothing that can drift.
//   - Request counters and the latency histogram are updated at the two
//     places a request's life is decided: hub.submit (accepted) and
//     hub.settleLocked (terminal and committed, exactly once per request).
//   - Upgrade counters are updated by countUpgrades, which wraps the two
//     WebSocket endpoints: an upgrade is accepted when the connection is
//     hijacked, refused otherwise, with the reason the handler noted.
//
// No metric carries a device id: with 50,000 devices a per-device queue
// gauge would be 50,000 series, most of them zero. The queue_depth
// histogram says how many devices have a backlog and how deep it is; the
// REST API (GET /v1/devices, "queued") names them.

// Refusal reasons of the upgrade endpoints (label reason of
// tether_relay_refusals_total). The handlers note them with noteRefusal;
// refusals without a note are labelled by status (refusalFor).
const (
	refusedUnauthorized = "unauthorized"    // missing or wrong token, key or ticket
	refusedOrigin       = "origin"          // a browser origin that may not connect
	refusedAdmission    = "admission"       // the admission token bucket was empty
	refusedMaxConns     = "max_conns"       // MaxConns sessions are open
	refusedShutdown     = "shutting_down"   // the relay is stopping
	refusedNotWebSocket = "not_websocket"   // a plain GET on an upgrade endpoint
	refusedSubprotocol  = "bad_subprotocol" // no tether.v1 among the offered subprotocols
	refusedRotation     = "rotation"        // a rotation's confirmation could not be recorded
	refusedClientConns  = "client_conns"    // the client holds ClientConns connections
)

// Endpoint label values.
const (
	endpointAgent  = "agent"
	endpointClient = "client"
)

// maxMethodLabels bounds the distinct method label values. Method names
// come from clients; only the first maxMethodLabels distinct valid names
// get a label of their own, every later one is counted as "other". A fleet
// exposes a few dozen methods, so this only bites on abuse or a bug.
const maxMethodLabels = 64

// otherLabel stands for label values outside a bounded set.
const otherLabel = "other"

// durationBuckets cover request latencies from a millisecond (a relay on
// the same LAN as a fast device) to five minutes (long timeouts).
var durationBuckets = []float64{
	.001, .0025, .005, .01, .025, .05, .1, .25, .5,
	1, 2.5, 5, 10, 30, 60, 120, 300,
}

// depthBuckets are the upper bounds of the queue_depth histogram; the
// default QueueLimit is 1000.
var depthBuckets = []float64{1, 10, 100, 1000, 10000}

// knownCodes are the error codes with a label value of their own; any other
// code (agents may send anything) is "other".
var knownCodes = func() map[string]bool {
	m := make(map[string]bool)
	for _, c := range []string{
		protocol.CodeBadParams, protocol.CodeNotFound, protocol.CodeNotPermitted,
		protocol.CodeHWError, protocol.CodeUnknownMethod, protocol.CodeInterrupted,
		protocol.CodeUndeliverable, protocol.CodeExpired, protocol.CodeCanceled,
		protocol.CodeTimeout, protocol.CodeQueueFull, protocol.CodeInternal,
		protocol.CodeBadFrame, protocol.CodeTooLarge, protocol.CodeUnknownType,
		protocol.CodeBadState,
	} {
		m[c] = true
	}
	return m
}()

// metrics is a Server's instrumentation. Its methods may be called on a
// nil *metrics (a hub built without a Server), and then do nothing.
type metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	submitted *prometheus.CounterVec   // method
	replayed  *prometheus.CounterVec   // method
	finished  *prometheus.CounterVec   // method, state, code
	duration  *prometheus.HistogramVec // method
	upgrades  *prometheus.CounterVec   // endpoint, result
	refusals  *prometheus.CounterVec   // endpoint, reason
	backups   *prometheus.CounterVec   // result
	backedUp  prometheus.Gauge         // when the last backup succeeded

	clientConns atomic.Int64 // upgraded /v1/client connections not yet closed

	methods methodLabels
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_requests_submitted_total",
			Help: "Requests accepted into a device queue, by method.",
		}, []string{"method"}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_requests_replayed_total",
			Help: "Submissions repeated with an idempotency key, answered with the request the key had made, by method.",
		}, []string{"method"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_requests_finished_total",
			Help: "Requests that reached a final state, by method, state and error code (empty when succeeded).",
		}, []string{"method", "state", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_relay_request_duration_seconds",
			Help:    "Time from submit to final state, by method, whatever the final state.",
			Buckets: durationBuckets,
		}, []string{"method"}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_upgrades_total",
			Help: "WebSocket upgrade attempts on /v1/agent and /v1/client, by endpoint and result (accepted or refused).",
		}, []string{"endpoint", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_refusals_total",
			Help: "Refused WebSocket upgrades, by endpoint and reason.",
		}, []string{"endpoint", "reason"}),
		backups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_relay_backups_total",
			Help: "Copies of the relay's data taken while it serves (tether-relay backup), by result (ok or failed).",
		}, []string{"result"}),
		backedUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_relay_backup_last_success_timestamp_seconds",
			Help: "When the last backup taken by this relay process succeeded (Unix time); 0 if none has. Alert on its age.",
		}),
		methods: methodLabels{seen: make(map[string]bool)},
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.submitted, m.replayed, m.finished, m.duration, m.upgrades, m.refusals, m.backups, m.backedUp,
		newStateCollector(s, m),
	)
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A scrape holds the hub's lock for one pass over the devices;
		// a few scrapers at once are plenty.
		MaxRequestsInFlight: 4,
	})
	return m
}

// requestSubmitted counts a request accepted into a queue.
func (m *metrics) requestSubmitted(method string) {
	if m == nil {
		return
	}
	m.submitted.WithLabelValues(m.methods.label(method)).Inc()
}

// backup counts a backup that ended with err.
func (m *metrics) backup(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.backups.WithLabelValues("failed").Inc()
		return
	}
	m.backups.WithLabelValues("ok").Inc()
	m.backedUp.SetToCurrentTime()
}

// requestReplayed counts a submission answered with the request its key
// had made.
func (m *metrics) requestReplayed(method string) {
	if m == nil {
		return
	}
	m.replayed.WithLabelValues(m.methods.label(method)).Inc()
}

// requestFinished counts a request that reached its final state and
// observes its latency.
func (m *metrics) requestFinished(rec *protocol.Record) {
	if m == nil {
		return
	}
	method := m.methods.label(rec.Method)
	state := rec.State
	if !protocol.Terminal(state) {
		state = otherLabel
	}
	code := ""
	if rec.Error != nil {
		code = otherLabel
		if knownCodes[rec.Error.Code] {
			code = rec.Error.Code
		}
	}
	m.finished.WithLabelValues(method, state, code).Inc()
	if rec.Finished != nil {
		m.duration.WithLabelValues(method).Observe(rec.Finished.Sub(rec.Created).Seconds())
	}
}

// methodLabels hands out method label values, at most maxMethodLabels of
// them, first come first served, for the life of the Server.
type methodLabels struct {
	mu sync.Mutex
	// Guarded by mu:
	seen map[string]bool
}

func (l *methodLabels) label(method string) string {
	if !protocol.ValidID(method) {
		return otherLabel
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[method] {
		return method
	}
	if len(l.seen) >= maxMethodLabels {
		return otherLabel
	}
	l.seen[method] = true
	return method
}

// stateCollector reports the relay's state gauges, read at scrape time.
type stateCollector struct {
	srv *Server
	met *metrics

	online, known, queued, delivered, retained, depth, sessions *prometheus.Desc
}

func newStateCollector(s *Server, m *metrics) *stateCollector {
	return &stateCollector{
		srv: s,
		met: m,
		online: prometheus.NewDesc("tether_relay_devices_online",
			"Devices with an agent session.", nil, nil),
		known: prometheus.NewDesc("tether_relay_devices_known",
			"Devices registered in the credentials.", nil, nil),
		queued: prometheus.NewDesc("tether_relay_queued_requests",
			"Requests waiting in device queues, over all devices.", nil, nil),
		delivered: prometheus.NewDesc("tether_relay_delivered_requests",
			"Requests leased to agent sessions and not yet finished, over all devices.", nil, nil),
		retained: prometheus.NewDesc("tether_relay_retained_requests",
			"Finished requests kept in the store for later reads.", nil, nil),
		depth: prometheus.NewDesc("tether_relay_queue_depth",
			"Queue depths of the devices that have queued requests: the count is how many devices have a backlog.", nil, nil),
		sessions: prometheus.NewDesc("tether_relay_sessions_active",
			"Open WebSocket connections, by endpoint.", []string{"endpoint"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.online, c.known, c.queued, c.delivered, c.retained, c.depth, c.sessions} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.hub.stats()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(c.online, st.online)
	gauge(c.known, c.srv.creds.deviceCount())
	gauge(c.queued, st.queued)
	gauge(c.delivered, st.delivered)
	gauge(c.retained, st.retained)
	ch <- prometheus.MustNewConstHistogram(c.depth, st.backlogged, float64(st.queued), st.depthCounts)
	gauge(c.sessions, c.srv.sessions.count(), endpointAgent)
	gauge(c.sessions, int(c.met.clientConns.Load()), endpointClient)
}

// hubStats is a snapshot of the hub's sizes.
type hubStats struct {
	online, queued, delivered, retained int
	backlogged                          uint64             // devices with a non-empty queue
	depthCounts                         map[float64]uint64 // cumulative, by depthBuckets
}

// stats takes a snapshot for the metrics. It holds mu for one pass over
// the devices: well under a millisecond for 50,000 of them, once per
// scrape.
func (h *hub) stats() hubStats {
	st := hubStats{depthCounts: make(map[float64]uint64, len(depthBuckets))}
	for _, b := range depthBuckets {
		st.depthCounts[b] = 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.devices {
		if d.sess != nil {
			st.online++
			st.delivered += len(d.sess.leases)
		}
		n := len(d.queue)
		if n == 0 {
			continue
		}
		st.queued += n
		st.backlogged++
		for _, b := range depthBuckets {
			if float64(n) <= b {
				st.depthCounts[b]++
			}
		}
	}
	st.retained = len(h.retained)
	return st
}

// count returns the number of agent sessions registered.
func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

// deviceCount returns the number of registered devices.
func (c *credCache) deviceCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	return len(c.names)
}

// handleMetrics serves GET /metrics to the networks in MetricsAllow.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.metricsAllowed(r) {
		writeError(w, http.StatusForbidden, codeForbidden, "metrics are served only to the networks in --metrics-allow (loopback by default; none: to nobody)")
		return
	}
	s.met.handler.ServeHTTP(w, r)
}

// metricsAllowed reports whether r may read the metrics. They hold no
// secrets and no device ids, but method names and load are nobody else's
// business. A request carrying proxy headers is refused whatever its peer:
// behind a reverse proxy on the same host (README) every request arrives
// from loopback, and the proxy must not hand /metrics to the world.
func (s *Server) metricsAllowed(r *http.Request) bool {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if _, ok := r.Header[h]; ok {
			return false
		}
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap().WithZone("")
	for _, p := range s.cfg.MetricsAllow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// loopbackNets is the default MetricsAllow.
func loopbackNets() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// countUpgrades wraps the handler of a WebSocket endpoint: a request whose
// connection is hijacked counts as an accepted upgrade, any other as a
// refusal, labelled with the reason the handler noted (noteRefusal) or,
// failing that, by status.
func (s *Server) countUpgrades(endpoint string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		uw := &upgradeWriter{statusRecorder: statusRecorder{ResponseWriter: w}, met: s.met, endpoint: endpoint}
		next(uw, r)
		if uw.hijacked {
			return
		}
		reason := noteOf(r).refused
		if reason == "" {
			reason = refusalFor(uw.status)
		}
		s.met.upgrades.WithLabelValues(endpoint, "refused").Inc()
		s.met.refusals.WithLabelValues(endpoint, reason).Inc()
	}
}

// refusalFor names the reason of a refusal nobody noted, from its status.
func refusalFor(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return refusedUnauthorized
	case http.StatusForbidden:
		return refusedOrigin
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusTooManyRequests:
		return "rate_limited"
	case http.StatusServiceUnavailable:
		return "unavailable"
	}
	return otherLabel
}

// upgradeWriter notes the status of a refusal and counts a hijack as an
// accepted upgrade. /v1/client connections are counted open until their
// socket is closed: agent sessions are counted from the tracker instead,
// but client connections are not registered anywhere.
type upgradeWriter struct {
	statusRecorder
	met      *metrics
	endpoint string
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := w.statusRecorder.Hijack()
	if err != nil {
		return c, rw, err
	}
	w.met.upgrades.WithLabelValues(w.endpoint, "accepted").Inc()
	if w.endpoint == endpointClient {
		w.met.clientConns.Add(1)
		c = &closeCounted{Conn: c, open: &w.met.clientConns}
	}
	return c, rw, nil
}

// closeCounted decrements open when the connection is first closed.
type closeCounted struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *closeCounted) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}
