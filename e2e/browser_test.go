package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/internal/faultproxy"
)

// browser starts headless Chromium from PATH (CI installs the Debian
// package; nothing is ever downloaded) and returns a tab's context. The
// cleanup closes the browser and waits for its process, so no goroutine
// or process outlives the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test skipped in -short mode")
	}
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found on PATH: install the Debian chromium package (.ci/run does), or run with -short to skip")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 1000),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		chromedp.Cancel(cctx) // closes the browser gracefully and waits
		cancel()
		cancelTab()
		cancelAlloc() // waits for the process to exit
	})
	// Start the browser now, so a broken install fails here clearly.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium %s: %v", bin, err)
	}
	return ctx
}

// step runs browser actions with a deadline and fails the test with what
// was being attempted.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

// openDevice signs in to the dashboard at base with key and opens pi-1,
// online, with the live connection up.
func openDevice(t *testing.T, ctx context.Context, base, key string) {
	t.Helper()
	step(t, ctx, "open the dashboard",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#key")))
	step(t, ctx, "sign in",
		chromedp.SendKeys(chromedp.CSS("#key"), key),
		chromedp.Click(chromedp.CSS(`#signin button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#app-view")))
	step(t, ctx, "see pi-1 online and open it",
		chromedp.WaitVisible(chromedp.CSS(`a[data-device="pi-1"][data-online="true"]`)),
		chromedp.Click(chromedp.CSS(`a[data-device="pi-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#device-detail`)),
		chromedp.WaitVisible(chromedp.CSS(`#methods button`)),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="connected"]`)))
}

// callFromForm calls method with params through the dashboard's form.
func callFromForm(t *testing.T, ctx context.Context, method, params string) {
	t.Helper()
	step(t, ctx, "call "+method,
		chromedp.SetValue(chromedp.CSS("#method"), method),
		chromedp.SetValue(chromedp.CSS("#params"), params),
		chromedp.Click(chromedp.CSS(`#call button[type="submit"]`)))
}

func TestDashboardInBrowser(t *testing.T) {
	d := startLiveDevice(t)
	ctx := browser(t)
	openDevice(t, ctx, d.relay.url(), d.key)
	if s := text(t, ctx, `a[data-device="pi-2"] .badge`); s != "offline" {
		t.Fatalf("pi-2 shows %q", s)
	}
	if caps := text(t, ctx, "#methods"); !strings.Contains(caps, "gpio.write") || !strings.Contains(caps, "i2c.tx") {
		t.Fatalf("capabilities %q", caps)
	}
	if res := text(t, ctx, "#resources-summary"); !strings.Contains(res, "i2c") {
		t.Fatalf("resources summary %q", res)
	}
	step(t, ctx, "open the resources", chromedp.Click(chromedp.CSS("#resources-summary")), chromedp.WaitVisible(chromedp.CSS("#resources")))
	if res := text(t, ctx, "#resources"); !strings.Contains(res, "GPIO27") {
		t.Fatalf("resources %q", res)
	}
	step(t, ctx, "fold the resources", chromedp.Click(chromedp.CSS("#resources-summary")))

	// Toggle GPIO17 through the call form; GPIO27 is wired to it and its
	// edge must show up live.
	call := func(method, params string) { t.Helper(); callFromForm(t, ctx, method, params) }
	call("gpio.write", `{"pin":"GPIO17","level":"high"}`)
	step(t, ctx, "see gpio.write succeed",
		chromedp.WaitVisible(chromedp.CSS(`#log tr[data-method="gpio.write"][data-state="succeeded"]`)))
	step(t, ctx, "see the GPIO27 edge",
		chromedp.WaitVisible(chromedp.CSS(`#events li[data-name="gpio.edge"]`)))
	if ev := text(t, ctx, `#events li[data-name="gpio.edge"]`); !strings.Contains(ev, "GPIO27") || !strings.Contains(ev, "rising") {
		t.Fatalf("event %q", ev)
	}
	call("gpio.write", `{"pin":"GPIO17","level":"low"}`)
	step(t, ctx, "see the falling edge",
		chromedp.WaitVisible(chromedp.CSS(`#events li[data-name="gpio.edge"]:nth-child(2)`)))
	if ev := text(t, ctx, `#events li:first-child`); !strings.Contains(ev, "falling") {
		t.Fatalf("newest event %q", ev)
	}

	// Read the TMP102's temperature register.
	call("i2c.tx", `{"bus":"1","addr":"0x48","write":"00","read":2}`)
	sel := `#log tr[data-method="i2c.tx"][data-state="succeeded"] td.result`
	step(t, ctx, "see i2c.tx succeed", chromedp.WaitVisible(chromedp.CSS(sel)))
	var res struct{ Read string }
	if err := json.Unmarshal([]byte(text(t, ctx, sel)), &res); err != nil {
		t.Fatal(err)
	}
	raw, err := hex.DecodeString(res.Read)
	if err != nil || len(raw) != 2 {
		t.Fatalf("i2c read %q", res.Read)
	}
	celsius := float64(int16(uint16(raw[0])<<8|uint16(raw[1]))>>4) * 0.0625
	if celsius < 15 || celsius > 35 {
		t.Fatalf("temperature %.2f °C", celsius)
	}
	t.Logf("TMP102 reads %.2f °C", celsius)

	// A failing call shows its error code.
	call("gpio.read", `{"pin":"GPIO99"}`)
	step(t, ctx, "see the failure", chromedp.WaitVisible(chromedp.CSS(`#log tr[data-method="gpio.read"][data-state="failed"]`)))

	// The key stays out of URLs and off the page; it is in session storage.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	href, err := chromedp.Run(sctx, chromedp.Evaluate[string](`location.href + " " + document.documentElement.outerHTML`))
	stored, err2 := chromedp.Run(sctx, chromedp.Evaluate[string](`sessionStorage.getItem("tether.key")`))
	cancel()
	if err != nil || err2 != nil {
		t.Fatal(err, err2)
	}
	if strings.Contains(href, d.key) || stored != d.key {
		t.Fatal("client key leaked into the URL or page, or is not kept in session storage")
	}

	screenshot(t, ctx)

	// Going offline shows live.
	d.agent.stop()
	step(t, ctx, "see pi-1 go offline",
		chromedp.WaitVisible(chromedp.CSS(`a[data-device="pi-1"][data-online="false"]`)))
}

// screenshot saves the dashboard as dist/dashboard.png (dist/ is not
// committed).
func screenshot(t *testing.T, ctx context.Context) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := filepath.Join("..", "dist")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	t.Logf("dashboard screenshot: %s", abs)
}

// A page from a foreign origin holding a valid ticket still cannot open
// /v1/client: the relay answers 403 before the upgrade, which the browser
// reports as a failed socket. The ticket is not even spent, which shows
// the origin check, not the ticket, refused it.
func TestForeignOriginPageCannotConnect(t *testing.T) {
	d := startLiveDevice(t)
	ctx := browser(t)
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<!doctype html><title>elsewhere</title>")
	}))
	defer foreign.Close()

	code, body := d.api.do("POST", "/v1/tickets", nil)
	if code != http.StatusCreated {
		t.Fatalf("ticket: %d %s", code, body)
	}
	var tk struct{ Ticket string }
	json.Unmarshal(body, &tk)
	wsURL := d.relay.wsURL() + "/v1/client?ticket=" + url.QueryEscape(tk.Ticket)

	step(t, ctx, "open the foreign page", chromedp.Navigate(foreign.URL))
	js := fmt.Sprintf(`new Promise((resolve) => {
		const ws = new WebSocket(%q);
		ws.onopen = () => { ws.close(); resolve("open"); };
		ws.onclose = (e) => resolve("closed " + e.code);
	})`, wsURL)
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	got, err := chromedp.Run(sctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if got != "closed 1006" {
		t.Fatalf("foreign page's socket: %s, want it refused (closed 1006)", got)
	}

	// The same ticket still works for a client without a browser origin.
	conn, resp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("ticket was spent by the refused upgrade: %v %v", err, resp)
	}
	conn.Close()
}

// A link to the dashboard whose fragment holds a malformed escape
// ("#/device/%E0%A4%A") does not stop the page: after signing in it opens
// its live connection as from any other link.
func TestDashboardMalformedLinkStillConnects(t *testing.T) {
	d := startLiveDevice(t)
	ctx := browser(t)
	step(t, ctx, "open the dashboard through a malformed link",
		chromedp.Navigate(d.relay.url()+"/#/device/%E0%A4%A"),
		chromedp.WaitVisible(chromedp.CSS("#key")))
	step(t, ctx, "sign in",
		chromedp.SendKeys(chromedp.CSS("#key"), d.key),
		chromedp.Click(chromedp.CSS(`#signin button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#app-view")))
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(sctx, chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="connected"]`))); err != nil {
		st, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("conn").dataset.state + " / " + document.getElementById("conn").textContent`))
		t.Fatalf("dashboard never connected after signing in from a link with a malformed fragment: conn is %q (%v)", st, err)
	}
}

// A call whose connection drops before the relay has named its request is
// sent again, with its key, once the dashboard has reconnected: one that
// never reached the relay is made then, and one whose answer was lost is
// answered for the request it made, which runs once.
func TestDashboardResendsACallLostWithItsConnection(t *testing.T) {
	d := startLiveDevice(t)
	p, err := faultproxy.Listen("127.0.0.1:0", d.relay.addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := browser(t)
	openDevice(t, ctx, "http://"+p.Addr(), d.key)

	// The call goes into a connection that has gone silent.
	p.BlackHole()
	callFromForm(t, ctx, "sys.ping", `{"lost":"on the way"}`)
	step(t, ctx, "see the call sending", chromedp.WaitVisible(chromedp.CSS(`#log tr[data-method="sys.ping"][data-state="sending"]`)))
	time.Sleep(200 * time.Millisecond) // the frame is in the black hole
	p.Reset()
	step(t, ctx, "see the call made after the reconnect",
		chromedp.WaitVisible(chromedp.CSS(`#log tr[data-method="sys.ping"][data-state="succeeded"]`)))

	// The call reaches the relay and runs; its answers are lost.
	p.MuteReplies()
	callFromForm(t, ctx, "gpio.write", `{"pin":"GPIO17","level":"high"}`)
	eventually(t, 10*time.Second, "the relay took the call", func() bool {
		return relayMetric(t, d.relay, `tether_relay_requests_submitted_total{method="gpio.write"}`) == 1
	})
	p.Reset()
	step(t, ctx, "see the call's result after the reconnect",
		chromedp.WaitVisible(chromedp.CSS(`#log tr[data-method="gpio.write"][data-state="succeeded"]`)))
	if n, r := relayMetric(t, d.relay, `tether_relay_requests_submitted_total{method="gpio.write"}`),
		relayMetric(t, d.relay, `tether_relay_requests_replayed_total{method="gpio.write"}`); n != 1 || r != 1 {
		t.Fatalf("gpio.write submitted %v times, answered by its key %v times; want once each", n, r)
	}
}

// relayMetric reads one series from the relay's /metrics (0 if absent).
func relayMetric(t *testing.T, r *testRelay, series string) float64 {
	t.Helper()
	resp, err := http.Get(r.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

// The device view lists what the device has yet to finish, including
// another client's submissions, and cancels a queued request from there:
// the request ends canceled, in the request log too, and leaves the list.
func TestDashboardPendingRequests(t *testing.T) {
	d := startLiveDevice(t)
	_, busy := d.api.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "20s"}, "")
	eventually(t, 5*time.Second, "the pulse running", func() bool { return d.api.get(busy.ID).State == "delivered" })
	_, q1 := d.api.submit("pi-1", "sys.ping", "one", "")
	_, q2 := d.api.submit("pi-1", "sys.ping", "two", "")

	ctx := browser(t)
	openDevice(t, ctx, d.relay.url(), d.key)
	row := func(id string) string { return `#pending tr[data-id="` + id + `"]` }
	step(t, ctx, "see the three pending requests",
		chromedp.WaitVisible(chromedp.CSS(row(busy.ID)+`[data-state="delivered"]`)),
		chromedp.WaitVisible(chromedp.CSS(row(q1.ID)+`[data-state="queued"]`)),
		chromedp.WaitVisible(chromedp.CSS(row(q2.ID)+`[data-state="queued"]`)))
	if queued := text(t, ctx, `#device-info [data-fact="queued"]`); queued != "2" {
		t.Errorf("queued fact %q, want 2", queued)
	}
	if first := text(t, ctx, `#pending tbody tr:first-child td.id`); first != busy.ID {
		t.Errorf("first pending row %q, want the running pulse %s", first, busy.ID)
	}
	step(t, ctx, "cancel the first queued ping",
		chromedp.Click(chromedp.CSS(row(q1.ID)+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#log tr[data-id="`+q1.ID+`"][data-state="canceled"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(row(q1.ID))))
	if got := d.api.get(q1.ID).State; got != "canceled" {
		t.Errorf("canceled from the list: relay says %s", got)
	}
	if got := d.api.get(q2.ID).State; got != "queued" {
		t.Errorf("the other ping: %s, want queued", got)
	}
}
