package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// client talks to the relay's REST API, and to /v1/client for watch.
type client struct {
	base   string // http(s)://host[:port][/prefix], no trailing slash
	key    string
	out    io.Writer
	errOut io.Writer
	http   http.Client
}

// httpError is a non-2xx answer of the relay.
type httpError struct {
	status     int
	code       string
	message    string
	body       []byte
	retryAfter time.Duration // its Retry-After, if whole seconds
}

func (e *httpError) Error() string {
	if e.code != "" {
		return fmt.Sprintf("relay: %d %s: %s", e.status, e.code, e.message)
	}
	return fmt.Sprintf("relay: %d %s", e.status, http.StatusText(e.status))
}

// baseURL checks a --relay value and returns its http(s) form. ws:// and
// wss:// are accepted too, since the agent is configured with those.
func baseURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("--relay %q: %w", s, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("--relay %q: want http://, https://, ws:// or wss://", s)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("--relay %q: want scheme://host[:port][/path]", s)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// do sends a request and decodes a 2xx JSON answer into v. Relay errors
// come back as *exitError{2, *httpError}.
func (c *client) do(ctx context.Context, method, path string, body, v any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.base, "/")+path, rd)
	if err != nil {
		return 0, &exitError{2, fmt.Errorf("relay URL: %w", err)}
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			return 0, &exitError{2, errors.New("interrupted")}
		case ctx.Err() != nil:
			// A deadline of the caller's (see poll): the error is a
			// timeout, which the caller may treat as a lost answer.
			return 0, &exitError{2, fmt.Errorf("no answer from relay in time: %w", err)}
		}
		return 0, &exitError{2, fmt.Errorf("cannot reach relay: %w", err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return resp.StatusCode, &exitError{2, fmt.Errorf("no answer from relay in time: %w", context.DeadlineExceeded)}
		}
		return resp.StatusCode, &exitError{2, fmt.Errorf("reading answer: %w", err)}
	}
	if resp.StatusCode >= 300 {
		he := &httpError{status: resp.StatusCode, body: data}
		if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n > 0 {
			he.retryAfter = time.Duration(n) * time.Second
		}
		var ae protocol.APIError
		if json.Unmarshal(data, &ae) == nil {
			he.code, he.message = ae.Error.Code, ae.Error.Message
		}
		return resp.StatusCode, &exitError{2, he}
	}
	if v != nil {
		if err := json.Unmarshal(data, v); err != nil {
			return resp.StatusCode, &exitError{2, fmt.Errorf("bad answer from relay: %w", err)}
		}
	}
	return resp.StatusCode, nil
}

func (c *client) devices(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devices", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return usageErr("devices: %w", err)
	}
	var list struct {
		Devices []protocol.DeviceInfo `json:"devices"`
	}
	if _, err := c.do(ctx, "GET", "/v1/devices", nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(c.out, list)
	}
	fmt.Fprintf(c.out, "%-20s %-8s %-8s %-20s %s\n", "DEVICE", "STATE", "QUEUED", "LAST SEEN", "BOARD")
	for _, d := range list.Devices {
		state, seen := "offline", "never"
		if d.Online {
			state = "online"
		}
		if d.LastSeen != nil {
			seen = d.LastSeen.Local().Format(time.DateTime)
		}
		fmt.Fprintf(c.out, "%-20s %-8s %-8d %-20s %s\n", d.ID, state, d.Queued, seen, d.Board)
	}
	return nil
}

// pending lists the requests a device has yet to finish, the ones it
// runs now first.
func (c *client) pending(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pending", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := positional(fs, args, 1, true, "DEVICE")
	if err != nil {
		return err
	}
	var list struct {
		Requests []protocol.Record `json:"requests"`
	}
	if _, err := c.do(ctx, "GET", "/v1/devices/"+url.PathEscape(pos[0])+"/requests", nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(c.out, list)
	}
	fmt.Fprintf(c.out, "%-34s %-10s %-20s %-8s %s\n", "ID", "STATE", "METHOD", "ATTEMPTS", "AGE")
	for _, r := range list.Requests {
		fmt.Fprintf(c.out, "%-34s %-10s %-20s %-8d %s\n", r.ID, r.State, r.Method, r.Attempts, time.Since(r.Created).Round(time.Second))
	}
	return nil
}

// positional parses a subcommand's flags, which may follow its positional
// arguments ("call pi-1 sys.ping --json"), and checks that there are at
// least min positional arguments (exactly min when exact). Both failures
// are usage errors naming the subcommand and what it wants.
func positional(fs *flag.FlagSet, args []string, min int, exact bool, want string) ([]string, error) {
	pos, err := interleave(fs, args)
	if err != nil {
		return nil, usageErr("%s: %w", fs.Name(), err)
	}
	if len(pos) < min || exact && len(pos) != min {
		return nil, usageErr("%s: want %s", fs.Name(), want)
	}
	return pos, nil
}

// interleave lets flags follow positional arguments
// ("call pi-1 sys.ping --json").
func interleave(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (c *client) call(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the request object as JSON")
	async := fs.Bool("async", false, "print the id and return")
	timeout := fs.Duration("timeout", 0, "request timeout")
	idem := fs.Bool("idempotent", false, "allow a re-run after an agent crash")
	key := fs.String("idempotency-key", "", "a call with a key the relay has seen gets that request instead of a new one (default: a new random key)")
	rawParams := fs.String("params", "", "params as a JSON object; key=value words are merged into it")
	pos, err := positional(fs, args, 2, false, "DEVICE METHOD [key=value…]")
	if err != nil {
		return err
	}
	params, err := buildParams(*rawParams, pos[2:])
	if err != nil {
		return usageErr("call: %v", err)
	}
	if *key == "" {
		*key = newCallKey()
	} else if !protocol.ValidID(*key) {
		return usageErr("call: --idempotency-key: want 1..%d printable characters", protocol.MaxIDLen)
	}
	sub := protocol.Submit{Method: pos[1], Params: params, Timeout: protocol.Duration(*timeout), Idempotent: *idem, Key: *key}
	// The submit asks for no wait, so its answer comes at once with the
	// request's id: whatever happens while the request runs (an
	// interrupt, a lost connection), the user is told the id to follow.
	rec, err := c.submit(ctx, pos[0], sub)
	if err != nil {
		return err
	}
	if *async {
		if *asJSON {
			return printJSON(c.out, rec)
		}
		fmt.Fprintln(c.out, rec.ID)
		return nil
	}
	gap := outage{pause: followBackoff}
	for !protocol.Terminal(rec.State) {
		asked := time.Now()
		err := c.poll(ctx, rec.ID, maxWait, &rec)
		if err == nil {
			gap.over()
			if !protocol.Terminal(rec.State) {
				pace(ctx, asked)
			}
			continue
		}
		// A relay restarting, or a network that drops for a while, does
		// not end the call: the request goes on, and a GET is safe to
		// repeat.
		if passing(ctx, err) && (gap.since.IsZero() || time.Since(gap.since) < followPatience) {
			gap.wait(ctx, c.errOut, err, "still following request "+rec.ID)
			continue
		}
		return &exitError{2, fmt.Errorf("%w; request %s may still run: follow it with `tether get %s`, or stop it with `tether cancel %s`",
			unwrapExit(err), rec.ID, rec.ID, rec.ID)}
	}
	return c.report(rec, *asJSON)
}

// poll gets request id into rec, long-polling for up to wait (none if
// 0). The answer is given wait plus pollSlack to come: a connection that
// carries nothing for longer was lost on the way without being closed (a
// proxy or a NAT that stopped forwarding, a relay stopped dead), and
// waiting on it would hang the command for ever. Such a poll fails with a
// timeout, which a call following its request treats as a lost answer.
func (c *client) poll(ctx context.Context, id string, wait time.Duration, rec *protocol.Record) error {
	path := "/v1/requests/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	pctx, cancel := context.WithTimeout(ctx, wait+pollSlack)
	defer cancel()
	_, err := c.do(pctx, "GET", path, nil, rec)
	return err
}

// outage waits out a relay that stopped answering a request's polls: it
// tells the user once, then sleeps a pause that doubles up to 5 s.
type outage struct {
	since time.Time // when the relay stopped answering; zero while it answers
	pause time.Duration
}

func (o *outage) wait(ctx context.Context, w io.Writer, err error, what string) {
	if o.since.IsZero() {
		o.since = time.Now()
		fmt.Fprintf(w, "tether: %v; %s\n", unwrapExit(err), what)
	}
	select {
	case <-time.After(o.pause):
	case <-ctx.Done():
	}
	o.pause = min(2*o.pause, 5*time.Second)
}

// over marks the relay answering again.
func (o *outage) over() { *o = outage{pause: followBackoff} }

// passing reports whether a poll that failed with err met a relay
// restarting or a network gap, which may pass, rather than an interrupt
// or a refusal.
func passing(ctx context.Context, err error) bool {
	return ctx.Err() == nil && (retrySubmit(err) || isDial(err))
}

// minPoll is the least time between the starts of two long-polls.
const minPoll = 100 * time.Millisecond

// pace waits until minPoll has passed since asked, when a long-poll came
// back: a relay shutting down answers long-polls at once, and a client
// must not spin on it until it has gone.
func pace(ctx context.Context, asked time.Time) {
	if d := minPoll - time.Since(asked); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
}

// followBackoff is the first pause of a call that lost the relay while
// following its request, and followPatience how long it keeps trying.
var (
	followBackoff  = 500 * time.Millisecond // variables for tests
	followPatience = time.Minute
)

// submit submits sub to device dev without a wait. An interrupt (ctx)
// during the submission waits, for submitGrace or until a second
// interrupt, for the relay's answer: the relay may have stored the
// request, and the user must learn its id rather than call again.
func (c *client) submit(ctx context.Context, dev string, sub protocol.Submit) (protocol.Record, error) {
	subCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	told := make(chan struct{}) // closed once the interrupt is handled
	stop := context.AfterFunc(ctx, func() {
		defer close(told)
		fmt.Fprintf(c.errOut, "tether: interrupted; waiting up to %v for the relay to answer the submission, to name the request (interrupt again to leave now)\n", submitGrace)
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		t := time.AfterFunc(submitGrace, cancel)
		go func() {
			defer signal.Stop(again)
			defer t.Stop()
			select {
			case <-again:
				cancel()
			case <-subCtx.Done():
			}
		}()
	})
	defer func() {
		if !stop() {
			<-told // its message goes out before the caller's
		}
	}()
	var rec protocol.Record
	// Submissions carry a key, so one whose answer was lost can be sent
	// again: the relay answers a repeat with the request it stored, if it
	// stored one, and the device runs it once.
	again := fmt.Sprintf("run the same call with --idempotency-key %s to submit it again without running it twice", sub.Key)
	// restarting: the relay said it is shutting down (503 unavailable),
	// so a connection refused next is its restart, not a wrong address.
	mayHaveSent, keysHonoured, restarting := false, false, false
	for attempt := 1; ; attempt++ {
		var err error
		if mayHaveSent && !keysHonoured {
			// A relay older than idempotency keys drops the key, and
			// would make the repeat a second request.
			if keysHonoured, err = c.honoursKeys(subCtx); err == nil && !keysHonoured {
				return rec, &exitError{2, fmt.Errorf("the relay's answer to the submission was lost, and this relay does not recognise idempotency keys "+
					"(it predates them), so submitting again could run the action twice; it may have taken the request: "+
					"see `tether devices` for %s's queue, and upgrade the relay", dev)}
			}
		}
		if err == nil {
			_, err = c.do(subCtx, "POST", "/v1/devices/"+url.PathEscape(dev)+"/requests", sub, &rec)
			if err == nil {
				break
			}
		}
		if ur, ok := unstoredRequest(err); ok {
			return rec, &exitError{2, fmt.Errorf("relay storage failed, but request %s for device %s may still run: "+
				"follow it with `tether get %s` rather than calling again", ur.ID, dev, ur.ID)}
		}
		if ctx.Err() != nil {
			return rec, &exitError{2, fmt.Errorf("interrupted while submitting; the relay did not say whether it took the request: %s", again)}
		}
		// Once an attempt may have reached the relay, its request may
		// exist whatever comes next: a relay that cannot be reached now
		// is asked again (it is restarting), and any other end names
		// the key, so that the user does not run the call anew.
		retry := retrySubmit(err) || (mayHaveSent || restarting) && isDial(err)
		if !retry {
			if mayHaveSent {
				return rec, &exitError{2, fmt.Errorf("%w; an earlier attempt's answer was lost, and the relay may have taken the request: %s", unwrapExit(err), again)}
			}
			return rec, err
		}
		mayHaveSent = mayHaveSent || !isDial(err) && !refusedBeforeStoring(err)
		restarting = restarting || refusedBeforeStoring(err)
		if attempt == len(submitBackoff)+1 {
			return rec, &exitError{2, fmt.Errorf("%w; gave up after %d attempts: %s", err, attempt, again)}
		}
		d := submitBackoff[attempt-1]
		if he := (*httpError)(nil); errors.As(err, &he) {
			// A relay that says when to come back is believed, within
			// reason: a call is not left waiting for minutes.
			d = max(d, min(he.retryAfter, maxRetryAfter))
		}
		fmt.Fprintf(c.errOut, "tether: %v; submitting again in %v (key %s)\n", unwrapExit(err), d, sub.Key)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return rec, &exitError{2, fmt.Errorf("interrupted while submitting; the relay did not say whether it took the request: %s", again)}
		}
	}
	if ctx.Err() != nil {
		return rec, &exitError{2, fmt.Errorf("interrupted; request %s was submitted and may run: follow it with `tether get %s`, or stop it with `tether cancel %s`",
			rec.ID, rec.ID, rec.ID)}
	}
	return rec, nil
}

// submitBackoff is how long a call waits before each new attempt at a
// submission whose answer was lost or that the relay could not take for
// now: about 4 s in all, the time a relay takes to restart.
var submitBackoff = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second} // a variable for tests

// maxRetryAfter bounds the Retry-After a call's resubmission waits for.
const maxRetryAfter = 10 * time.Second

// retrySubmit reports whether a submission that failed with err may be
// sent again, with its key, in the hope of an answer: the relay's answer
// was lost on the way (the connection broke or timed out once it was
// made), or the relay (or a proxy before it) answered that it could not
// take the request for now. A connection refused (unless the relay has
// answered before that it may have the request, or that it is shutting
// down: see submit), an unknown host, a failure of the relay's storage or
// a refusal that names the client's mistake is told at once.
func retrySubmit(err error) bool {
	var he *httpError
	if errors.As(err, &he) {
		switch he.status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne) && ne.Timeout()
}

// refusedBeforeStoring reports whether err is the relay's own answer that
// it is shutting down, given before it stores anything.
func refusedBeforeStoring(err error) bool {
	var he *httpError
	return errors.As(err, &he) && he.status == http.StatusServiceUnavailable && he.code == "unavailable"
}

// honoursKeys asks the relay (GET /healthz) whether it answers a repeated
// submission by its idempotency key.
func (c *client) honoursKeys(ctx context.Context) (bool, error) {
	var health struct {
		Keys bool `json:"idempotency_keys"`
	}
	if _, err := c.do(ctx, "GET", "/healthz", nil, &health); err != nil {
		return false, err
	}
	return health.Keys, nil
}

// isDial reports whether err is a failure to connect, before anything
// was sent.
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// unwrapExit returns the error an exitError carries.
func unwrapExit(err error) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.err
	}
	return err
}

// newCallKey returns a fresh idempotency key for a call.
func newCallKey() string {
	var b [12]byte
	rand.Read(b[:])
	return "tether-" + hex.EncodeToString(b[:])
}

// maxWait is the longest ?wait= the relay honours by default; a longer
// wait is made of several long-polls.
var maxWait = 60 * time.Second // a variable for tests

// submitGrace bounds how long a call interrupted during its submission
// still waits for the answer, counted from the interrupt.
var submitGrace = 15 * time.Second // a variable for tests

// unstoredRequest returns the request that came with err, a relay's 500
// telling that its storage failed after the request had reached the
// device: the device may run it, so it is to be followed by its id, not
// submitted again.
func unstoredRequest(err error) (protocol.Record, bool) {
	var he *httpError
	if !errors.As(err, &he) || he.status != http.StatusInternalServerError {
		return protocol.Record{}, false
	}
	var body struct {
		Request protocol.Record `json:"request"`
	}
	if json.Unmarshal(he.body, &body) != nil || body.Request.ID == "" {
		return protocol.Record{}, false
	}
	return body.Request, true
}

// report prints a finished request and maps its state to the exit code.
func (c *client) report(rec protocol.Record, asJSON bool) error {
	if asJSON {
		if err := printJSON(c.out, rec); err != nil {
			return err
		}
	} else if rec.State == protocol.StateSucceeded {
		if len(rec.Result) > 0 {
			// Indented, but otherwise as the device sent it: a number
			// keeps all its digits, a string its characters.
			var b bytes.Buffer
			if json.Indent(&b, rec.Result, "", "  ") != nil {
				b.Reset()
				b.Write(rec.Result)
			}
			fmt.Fprintln(c.out, b.String())
		}
	} else if !protocol.Terminal(rec.State) {
		fmt.Fprintf(c.out, "%s %s\n", rec.ID, rec.State)
	}
	switch {
	case rec.State == protocol.StateSucceeded || !protocol.Terminal(rec.State):
		return nil
	case rec.Error != nil:
		return &exitError{1, fmt.Errorf("request %s %s: %s", rec.ID, rec.State, rec.Error)}
	default:
		return &exitError{1, fmt.Errorf("request %s %s", rec.ID, rec.State)}
	}
}

// buildParams merges a JSON object given with --params and key=value
// words (which win) into the params of a call.
func buildParams(raw string, words []string) (json.RawMessage, error) {
	if raw == "" {
		return parseParams(words)
	}
	obj := map[string]json.RawMessage{}
	if err := json.Unmarshal([]byte(raw), &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("--params: want a JSON object")
	}
	kv, err := parseParams(words)
	if err != nil {
		return nil, err
	}
	if kv != nil {
		var more map[string]json.RawMessage
		json.Unmarshal(kv, &more)
		for k, v := range more {
			obj[k] = v
		}
	}
	return json.Marshal(obj)
}

// parseParams turns words into a JSON object, the way httpie does:
// key=value is always the string "value" (so bus=1 and write=00 stay
// strings, as hex data and bus names must), key:=value is raw JSON
// (read:=2, on:=true, opts:='{"a":1}'), and key:=0x48 is the number 72.
// Guessing types from the look of a value would turn write=10 into a
// number and break it.
func parseParams(words []string) (json.RawMessage, error) {
	if len(words) == 0 {
		return nil, nil
	}
	obj := make(map[string]json.RawMessage, len(words))
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" || k == ":" {
			return nil, fmt.Errorf("parameter %q: want key=value or key:=JSON", w)
		}
		raw := strings.HasSuffix(k, ":")
		k = strings.TrimSuffix(k, ":")
		switch {
		case !raw:
			b, _ := json.Marshal(v)
			obj[k] = b
		case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
			n, err := strconv.ParseUint(v[2:], 16, 64)
			if err != nil {
				return nil, fmt.Errorf("parameter %s: %q is not a hex number", k, v)
			}
			obj[k] = json.RawMessage(strconv.FormatUint(n, 10))
		case json.Valid([]byte(v)):
			obj[k] = json.RawMessage(v)
		default:
			return nil, fmt.Errorf("parameter %s: %q is not JSON (use %s=%s for a string)", k, v, k, v)
		}
	}
	return json.Marshal(obj)
}

func (c *client) get(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	wait := fs.Duration("wait", 0, "wait up to this long for the request to finish")
	asJSON := fs.Bool("json", false, "print the request object as JSON")
	pos, err := positional(fs, args, 1, true, "ID")
	if err != nil {
		return err
	}
	// The relay caps each long-poll (at a minute by default), so a longer
	// --wait polls again until the request ends or the time has passed.
	deadline := time.Now().Add(*wait)
	var rec protocol.Record
	gap := outage{pause: followBackoff}
	for {
		asked := time.Now()
		left := max(time.Until(deadline).Round(time.Millisecond), 0)
		if err := c.poll(ctx, pos[0], min(left, maxWait), &rec); err != nil {
			// While there is time left to wait, a relay restarting or a
			// network gap is waited out, as a call does.
			if !passing(ctx, err) || time.Until(deadline) < gap.pause {
				return err
			}
			gap.wait(ctx, c.errOut, err, "still waiting for request "+pos[0])
			continue
		}
		gap.over()
		if protocol.Terminal(rec.State) || !time.Now().Before(deadline) {
			return c.report(rec, *asJSON)
		}
		pace(ctx, asked)
	}
}

// cancel cancels a request. It exits 0 when the request ended canceled
// or the cancel is on its way to the agent, and 1 when the request had
// already finished some other way.
func (c *client) cancel(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cancel", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the request object as JSON")
	pos, err := positional(fs, args, 1, true, "ID")
	if err != nil {
		return err
	}
	var rec protocol.Record
	_, err = c.do(ctx, "DELETE", "/v1/requests/"+url.PathEscape(pos[0]), nil, &rec)
	var he *httpError
	if errors.As(err, &he) && he.status == http.StatusConflict {
		var body struct {
			Request protocol.Record `json:"request"`
		}
		if json.Unmarshal(he.body, &body) == nil && body.Request.ID != "" {
			if *asJSON {
				printJSON(c.out, body.Request)
			} else {
				fmt.Fprintf(c.out, "%s %s\n", body.Request.ID, body.Request.State)
			}
			return &exitError{1, fmt.Errorf("request %s already %s", body.Request.ID, body.Request.State)}
		}
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(c.out, rec)
	}
	if protocol.Terminal(rec.State) {
		fmt.Fprintf(c.out, "%s %s\n", rec.ID, rec.State)
	} else {
		fmt.Fprintf(c.out, "%s %s, cancel sent to the device\n", rec.ID, rec.State)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// pollSlack is how long past the wait it asked for a long-poll is given
// for its answer before the connection counts as lost.
var pollSlack = 30 * time.Second // a variable for tests
