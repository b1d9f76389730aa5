package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherhq/tether/protocol"
)

// Timing of watch's connection to /v1/client. The CLI pings on its own
// schedule so that it finds a dead link whatever the relay's ping period.
const (
	watchPing      = 15 * time.Second
	watchDeadAfter = 3 * watchPing // silent this long: reconnect
	watchWrite     = 5 * time.Second
	backoffInitial = 500 * time.Millisecond
	backoffMax     = 30 * time.Second
	// healthyAfter resets the backoff: a session that lasted this long
	// was not part of a failure streak.
	healthyAfter = 10 * time.Second
)

// errUnknownDevice ends watch: no reconnect will fix it.
var errUnknownDevice = errors.New("unknown device")

// refusedError is the relay refusing the subscription for good (the key
// may not use the device): watch ends, as on a 401 or 403.
type refusedError struct{ code, message string }

func (e *refusedError) Error() string { return e.code + ": " + e.message }

// watchState survives reconnects, so a new session resumes where the old
// one stopped and only reports real presence changes.
type watchState struct {
	device string
	asJSON bool
	after  *uint64 // highest event seq printed
	online *bool   // last presence printed
}

// watch follows a device's events and presence over the client
// WebSocket until ctx ends (exit 0). It reconnects with backoff after a
// lost connection; a first connection that fails is an error (exit 2).
func (c *client) watch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print each event and presence frame as a JSON line")
	pos, err := positional(fs, args, 1, true, "DEVICE")
	if err != nil {
		return err
	}
	st := &watchState{device: pos[0], asJSON: *asJSON}
	connected := false
	failures := 0
	for {
		began := time.Now()
		up, err := c.watchSession(ctx, st)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errUnknownDevice) {
			return &exitError{2, fmt.Errorf("watch: %w %q", err, st.device)}
		}
		var re *refusedError
		if errors.As(err, &re) {
			return &exitError{2, fmt.Errorf("watch %q: %w", st.device, err)}
		}
		var he *httpError
		if !connected && !up || errors.As(err, &he) && (he.status == http.StatusUnauthorized || he.status == http.StatusForbidden) {
			return &exitError{2, fmt.Errorf("watch: %w", err)}
		}
		connected = connected || up
		if time.Since(began) > healthyAfter {
			failures = 0
		}
		delay := backoff(failures)
		failures++
		fmt.Fprintf(c.errOut, "tether: watch: connection lost (%v); reconnecting in %v\n", err, delay.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// backoff is exponential with full jitter.
func backoff(n int) time.Duration {
	d := backoffInitial << min(n, 6)
	d = min(d, backoffMax)
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// wsURL turns the relay's http(s) base into the /v1/client URL.
func (c *client) wsURL() string {
	u := c.base
	switch {
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + strings.TrimPrefix(u, "https://")
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + strings.TrimPrefix(u, "http://")
	}
	return u + protocol.ClientPath
}

// watchSession runs one connection. up reports whether it got as far as
// a subscription; err says why it ended.
func (c *client) watchSession(ctx context.Context, st *watchState) (up bool, err error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: http.ProxyFromEnvironment}
	h := http.Header{}
	if c.key != "" {
		// A service authenticates with its key in a header, never in the URL.
		h.Set("Authorization", "Bearer "+c.key)
	}
	conn, resp, err := d.DialContext(ctx, c.wsURL(), h)
	if err != nil {
		if resp != nil {
			he := &httpError{status: resp.StatusCode}
			var ae protocol.APIError
			if b, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10)); rerr == nil && json.Unmarshal(b, &ae) == nil {
				he.code, he.message = ae.Error.Code, ae.Error.Message
			}
			resp.Body.Close()
			return false, he
		}
		return false, fmt.Errorf("cannot reach relay: %w", err)
	}
	defer conn.Close()

	// One goroutine does the pinging and the polite close at ctx's end;
	// this one reads. Control frames may be written concurrently.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(watchPing)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(watchWrite))
			case <-ctx.Done():
				conn.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
				conn.Close()
				return
			case <-done:
				return
			}
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
	}()

	conn.SetReadLimit(16 << 20)
	conn.SetReadDeadline(time.Now().Add(watchDeadAfter))
	conn.SetPongHandler(func(string) error { return conn.SetReadDeadline(time.Now().Add(watchDeadAfter)) })
	sub, _ := protocol.Encode(&protocol.ClientSubscribe{Ref: "watch", Device: st.device, After: st.after})
	conn.SetWriteDeadline(time.Now().Add(watchWrite))
	if err := conn.WriteMessage(websocket.TextMessage, sub); err != nil {
		return false, err
	}
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return up, err
		}
		conn.SetReadDeadline(time.Now().Add(watchDeadAfter))
		m, err := protocol.DecodePush(b, 0)
		if err != nil {
			fmt.Fprintf(c.errOut, "tether: watch: ignoring frame: %v\n", err)
			continue
		}
		switch m := m.(type) {
		case *protocol.ClientPresence:
			up = true
			if st.after == nil && m.Seq != nil {
				// Where the stream starts: a reconnect resumes from
				// here, so events sent while it was down are not lost.
				seq := *m.Seq
				st.after = &seq
			}
			c.printPresence(st, m, b)
		case *protocol.ClientEvent:
			if st.after != nil && m.Seq <= *st.after {
				continue // replayed across a reconnect
			}
			seq := m.Seq
			st.after = &seq
			if st.asJSON {
				fmt.Fprintf(c.out, "%s\n", b)
			} else {
				fmt.Fprintf(c.out, "%s event %s #%d %s %s\n", m.Time.Local().Format(time.TimeOnly), m.Device, m.Seq, m.Name, m.Data)
			}
		case *protocol.ClientError:
			switch {
			case m.Code == protocol.CodeNotFound:
				return up, errUnknownDevice
			case m.Code == "forbidden" || m.Code == "unauthorized":
				return up, &refusedError{m.Code, m.Message}
			case m.Ref == "watch":
				// The subscription ended some other way (too many, an
				// internal error): a new connection subscribes again
				// from the last event seen.
				return up, fmt.Errorf("relay error %s: %s", m.Code, m.Message)
			}
			fmt.Fprintf(c.errOut, "tether: watch: relay error %s: %s\n", m.Code, m.Message)
		}
	}
}

func (c *client) printPresence(st *watchState, p *protocol.ClientPresence, raw []byte) {
	if st.online != nil && *st.online == p.Online {
		return
	}
	online := p.Online
	st.online = &online
	if st.asJSON {
		fmt.Fprintf(c.out, "%s\n", raw)
		return
	}
	state, seen := "offline", ""
	if p.Online {
		state = "online"
	}
	if p.LastSeen != nil {
		seen = " (last seen " + p.LastSeen.Local().Format(time.DateTime) + ")"
	}
	fmt.Fprintf(c.out, "%s presence %s %s%s\n", time.Now().Format(time.TimeOnly), p.Device, state, seen)
}
