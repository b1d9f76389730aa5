package relay

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// scrape GETs /metrics and returns every sample by its series as printed
// ("name{a=\"x\",b=\"y\"}"; labels in name order).
func scrape(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	resp, err := http.Get(e.ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// expectSamples fails for every series in want whose value differs.
func expectSamples(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("no sample %s", k)
		} else if v != w {
			t.Errorf("%s = %v, want %v", k, v, w)
		}
	}
}

func TestMetricsRequestCycle(t *testing.T) {
	e := newEnv(t)
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "sys.ping"})
	req := nextAs[*protocol.Request](a)

	// The request frame is sent only after the lease is in place.
	expectSamples(t, scrape(t, e), map[string]float64{
		`tether_relay_devices_online`:                                     1,
		`tether_relay_devices_known`:                                      1,
		`tether_relay_delivered_requests`:                                 1,
		`tether_relay_queued_requests`:                                    0,
		`tether_relay_requests_submitted_total{method="sys.ping"}`:        1,
		`tether_relay_upgrades_total{endpoint="agent",result="accepted"}`: 1,
		`tether_relay_sessions_active{endpoint="agent"}`:                  1,
		`tether_relay_sessions_active{endpoint="client"}`:                 0,
	})

	a.succeed(req.ID, `"pong"`) // the ack comes after the request settled
	if got := e.record(rec.ID, ""); got.State != protocol.StateSucceeded {
		t.Fatalf("state %s", got.State)
	}
	m := scrape(t, e)
	expectSamples(t, m, map[string]float64{
		`tether_relay_delivered_requests`: 0,
		`tether_relay_retained_requests`:  1,
		`tether_relay_requests_finished_total{code="",method="sys.ping",state="succeeded"}`: 1,
		`tether_relay_request_duration_seconds_count{method="sys.ping"}`:                    1,
		`tether_relay_request_duration_seconds_bucket{method="sys.ping",le="+Inf"}`:         1,
	})
	if d := m[`tether_relay_request_duration_seconds_sum{method="sys.ping"}`]; d <= 0 || d > waitLimit.Seconds() {
		t.Errorf("duration sum %v", d)
	}
	if m["go_goroutines"] == 0 {
		t.Error("the Go collector is not registered")
	}

	// Two requests the agent has no credits for wait in the queue, and
	// end canceled.
	r1 := e.submit(protocol.Submit{Method: "sys.ping"})
	r2 := e.submit(protocol.Submit{Method: "gpio.read"})
	expectSamples(t, scrape(t, e), map[string]float64{
		`tether_relay_queued_requests`:                              2,
		`tether_relay_queue_depth_count`:                            1,
		`tether_relay_queue_depth_sum`:                              2,
		`tether_relay_queue_depth_bucket{le="1"}`:                   0,
		`tether_relay_queue_depth_bucket{le="10"}`:                  1,
		`tether_relay_queue_depth_bucket{le="+Inf"}`:                1,
		`tether_relay_requests_submitted_total{method="sys.ping"}`:  2,
		`tether_relay_requests_submitted_total{method="gpio.read"}`: 1,
	})
	for _, id := range []string{r1.ID, r2.ID} {
		if st, body := e.do("DELETE", "/v1/requests/"+id, nil); st != http.StatusOK {
			t.Fatalf("cancel: %d %s", st, body)
		}
	}
	expectSamples(t, scrape(t, e), map[string]float64{
		`tether_relay_queued_requests`:   0,
		`tether_relay_queue_depth_count`: 0,
		`tether_relay_requests_finished_total{code="canceled",method="sys.ping",state="canceled"}`:  1,
		`tether_relay_requests_finished_total{code="canceled",method="gpio.read",state="canceled"}`: 1,
	})

	a.close()
	waitFor(t, "device offline", func() bool {
		m := scrape(t, e)
		return m[`tether_relay_devices_online`] == 0 && m[`tether_relay_sessions_active{endpoint="agent"}`] == 0
	})
}

func TestMetricsRefusals(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdmitRate, c.AdmitBurst = 0.2, 1 })
	dial := func(h http.Header) int {
		t.Helper()
		d := websocket.Dialer{Subprotocols: []string{protocol.Version}, HandshakeTimeout: waitLimit}
		conn, resp, err := d.Dial(e.wsURL(), h)
		if err == nil {
			conn.Close()
			t.Fatal("upgrade accepted")
		}
		if resp == nil {
			t.Fatalf("no answer: %v", err)
		}
		return resp.StatusCode
	}
	// A browser is refused before the bucket, a wrong token spends the
	// burst, so the right token finds the bucket empty.
	if st := dial(http.Header{"Origin": {"https://evil.example"}, "Authorization": {"Bearer " + e.token}}); st != http.StatusForbidden {
		t.Fatalf("origin: %d", st)
	}
	if st := dial(keyHeader(DeviceTokenPrefix + "wrong")); st != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", st)
	}
	if st := dial(keyHeader(e.token)); st != http.StatusServiceUnavailable {
		t.Fatalf("past the admission rate: %d", st)
	}
	if _, resp, err := dialClientRaw(e, keyHeader(ClientKeyPrefix+"wrong"), ""); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong client key: %v", err)
	}
	c := dialClient(e)
	expectSamples(t, scrape(t, e), map[string]float64{
		`tether_relay_upgrades_total{endpoint="agent",result="refused"}`:       3,
		`tether_relay_refusals_total{endpoint="agent",reason="origin"}`:        1,
		`tether_relay_refusals_total{endpoint="agent",reason="unauthorized"}`:  1,
		`tether_relay_refusals_total{endpoint="agent",reason="admission"}`:     1,
		`tether_relay_upgrades_total{endpoint="client",result="refused"}`:      1,
		`tether_relay_refusals_total{endpoint="client",reason="unauthorized"}`: 1,
		`tether_relay_upgrades_total{endpoint="client",result="accepted"}`:     1,
		`tether_relay_sessions_active{endpoint="client"}`:                      1,
	})
	c.close()
	waitFor(t, "client connection counted closed", func() bool {
		return scrape(t, e)[`tether_relay_sessions_active{endpoint="client"}`] == 0
	})
}

func TestMetricsAccess(t *testing.T) {
	get := func(e *env, h http.Header) int {
		t.Helper()
		req, _ := http.NewRequest("GET", e.ts.URL+"/metrics", nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	e := newEnv(t)
	if st := get(e, nil); st != http.StatusOK {
		t.Fatalf("loopback: %d", st)
	}
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-IP"} {
		if st := get(e, http.Header{h: {"203.0.113.7"}}); st != http.StatusForbidden {
			t.Errorf("through a proxy (%s): %d, want 403", h, st)
		}
	}
	for name, allow := range map[string][]netip.Prefix{
		"other network": {netip.MustParsePrefix("10.0.0.0/8")},
		"none":          {},
	} {
		e := newEnv(t, func(c *Config) { c.MetricsAllow = allow })
		if st := get(e, nil); st != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, st)
		}
	}

	s := &Server{cfg: Config{MetricsAllow: loopbackNets()}}
	for _, tc := range []struct {
		remote string
		ok     bool
	}{
		{"127.0.0.1:5000", true},
		{"127.8.9.10:5000", true},
		{"[::1]:5000", true},
		{"[::ffff:127.0.0.1]:5000", true},
		{"192.0.2.1:5000", false},
		{"[fe80::1%eth0]:5000", false},
		{"garbage", false},
	} {
		r := httptest.NewRequest("GET", "/metrics", nil)
		r.RemoteAddr = tc.remote
		if got := s.metricsAllowed(r); got != tc.ok {
			t.Errorf("%s: allowed %v, want %v", tc.remote, got, tc.ok)
		}
	}
}

func TestMethodLabelsBounded(t *testing.T) {
	l := methodLabels{seen: make(map[string]bool)}
	for i := range maxMethodLabels {
		m := fmt.Sprintf("m%d", i)
		if got := l.label(m); got != m {
			t.Fatalf("label(%s) = %s", m, got)
		}
	}
	for in, want := range map[string]string{
		"m0":        "m0", // known ones keep their label
		"m_new":     otherLabel,
		"":          otherLabel,
		"has space": otherLabel,
	} {
		if got := l.label(in); got != want {
			t.Errorf("label(%q) = %q, want %q", in, got, want)
		}
	}
}

// The access log has one line per request, names who authenticated and
// never holds a device token or a client key. (Tickets and the client
// WebSocket are covered by TestClientTickets.)
func TestAccessLogNamesNotSecrets(t *testing.T) {
	logs := &logBuffer{}
	e := newEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	a := dialAgent(e, e.token)
	a.send(&protocol.Pull{N: 1})
	rec := e.submit(protocol.Submit{Method: "sys.ping"})
	a.succeed(nextAs[*protocol.Request](a).ID, `1`)
	e.record(rec.ID, "5s")
	if _, resp, err := dialRaw(e, DeviceTokenPrefix+"wrong", []string{protocol.Version}); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %v", err)
	}
	scrape(t, e)
	a.close()
	e.stop()

	out := logs.String()
	for _, secret := range []string{e.token, e.key} {
		if strings.Contains(out, secret) {
			t.Fatalf("a secret reached the log:\n%s", out)
		}
	}
	var lines []string
	for l := range strings.Lines(out) {
		if strings.Contains(l, " msg=http ") {
			lines = append(lines, l)
		}
	}
	want := []string{
		"uri=/v1/agent status=101 ",
		"uri=/v1/devices/dev1/requests status=202 ",
		`uri="/v1/requests/` + rec.ID + `?wait=5s" status=200 `, // quoted for the "="
		"uri=/v1/agent status=401 ",
		"uri=/metrics status=200 ",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d access log lines, want %d:\n%s", len(lines), len(want), out)
	}
	for _, w := range want {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d lines with %q, want 1", n, w)
		}
	}
	for _, l := range lines {
		switch {
		case strings.Contains(l, "status=101"):
			if !strings.Contains(l, "device=dev1") {
				t.Errorf("agent upgrade without the device: %s", l)
			}
		case strings.Contains(l, "status=401"):
			if !strings.Contains(l, "refused=unauthorized") || strings.Contains(l, "device=") {
				t.Errorf("refused upgrade: %s", l)
			}
		case strings.Contains(l, "uri=/v1/"):
			if !strings.Contains(l, "client=web") {
				t.Errorf("REST call without the client: %s", l)
			}
		}
		if !strings.Contains(l, " ms=") || !strings.Contains(l, " remote=127.0.0.1:") {
			t.Errorf("line lacks duration or remote: %s", l)
		}
	}
}

// Backups are counted by result, and the last good one's time is kept, so
// an operator can alert on a backup job that stopped working.
func TestMetricsBackups(t *testing.T) {
	e := newEnv(t)
	if got := scrape(t, e)["tether_relay_backup_last_success_timestamp_seconds"]; got != 0 {
		t.Errorf("last backup %v before any", got)
	}
	before := time.Now().Unix()
	if err := e.srv.Backup(context.Background(), io.Discard); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.srv.Backup(ctx, io.Discard); err == nil {
		t.Fatal("a canceled backup succeeded")
	}
	got := scrape(t, e)
	expectSamples(t, got, map[string]float64{
		`tether_relay_backups_total{result="ok"}`:     1,
		`tether_relay_backups_total{result="failed"}`: 1,
	})
	if at := got["tether_relay_backup_last_success_timestamp_seconds"]; at < float64(before) {
		t.Errorf("last backup at %v, want after %d", at, before)
	}
}
