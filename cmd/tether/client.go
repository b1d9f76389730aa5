package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// client talks to the relay's REST API.
type client struct {
	base string
	key  string
	out  io.Writer
	http http.Client
}

// do sends a request and decodes a 2xx JSON answer into v. Relay errors
// come back as *apiError.
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
		if ctx.Err() != nil {
			return 0, &exitError{2, errors.New("interrupted")}
		}
		return 0, &exitError{2, fmt.Errorf("cannot reach relay: %w", err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, &exitError{2, fmt.Errorf("reading answer: %w", err)}
	}
	if resp.StatusCode >= 300 {
		var ae protocol.APIError
		if json.Unmarshal(data, &ae) == nil && ae.Error.Code != "" {
			return resp.StatusCode, &exitError{2, fmt.Errorf("relay: %d %s: %s", resp.StatusCode, ae.Error.Code, ae.Error.Message)}
		}
		return resp.StatusCode, &exitError{2, fmt.Errorf("relay: %s", resp.Status)}
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
		return usageErr("devices: %v", err)
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
	pos, err := interleave(fs, args)
	if err != nil {
		return usageErr("call: %v", err)
	}
	if len(pos) < 2 {
		return usageErr("call: want DEVICE METHOD [key=value…]")
	}
	params, err := parseParams(pos[2:])
	if err != nil {
		return usageErr("call: %v", err)
	}
	sub := protocol.Submit{Method: pos[1], Params: params, Timeout: protocol.Duration(*timeout), Idempotent: *idem}
	path := "/v1/devices/" + url.PathEscape(pos[0]) + "/requests"
	if !*async {
		path += "?wait=60s"
	}
	var rec protocol.Record
	if _, err := c.do(ctx, "POST", path, sub, &rec); err != nil {
		return err
	}
	if *async {
		if *asJSON {
			return printJSON(c.out, rec)
		}
		fmt.Fprintln(c.out, rec.ID)
		return nil
	}
	for !protocol.Terminal(rec.State) {
		if _, err := c.do(ctx, "GET", "/v1/requests/"+url.PathEscape(rec.ID)+"?wait=60s", nil, &rec); err != nil {
			return err
		}
	}
	return c.report(rec, *asJSON)
}

// report prints a finished request and maps its state to the exit code.
func (c *client) report(rec protocol.Record, asJSON bool) error {
	if asJSON {
		if err := printJSON(c.out, rec); err != nil {
			return err
		}
	} else if rec.State == protocol.StateSucceeded {
		if len(rec.Result) > 0 {
			var v any
			if json.Unmarshal(rec.Result, &v) == nil {
				b, _ := json.MarshalIndent(v, "", "  ")
				fmt.Fprintln(c.out, string(b))
			}
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

// parseParams turns key=value words into a JSON object. A value that is
// valid JSON (number, true, {…}) is taken as such, 0x… as a number, and
// anything else as a string.
func parseParams(words []string) (json.RawMessage, error) {
	if len(words) == 0 {
		return nil, nil
	}
	obj := make(map[string]json.RawMessage, len(words))
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parameter %q: want key=value", w)
		}
		switch {
		case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
			n, err := strconv.ParseUint(v[2:], 16, 64)
			if err != nil {
				return nil, fmt.Errorf("parameter %s: %q is not a hex number", k, v)
			}
			obj[k] = json.RawMessage(strconv.FormatUint(n, 10))
		case json.Valid([]byte(v)) && v != "":
			obj[k] = json.RawMessage(v)
		default:
			b, _ := json.Marshal(v)
			obj[k] = b
		}
	}
	return json.Marshal(obj)
}

func (c *client) get(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	wait := fs.Duration("wait", 0, "wait up to this long for the request to finish")
	pos, err := interleave(fs, args)
	if err != nil {
		return usageErr("get: %v", err)
	}
	if len(pos) != 1 {
		return usageErr("get: want ID")
	}
	path := "/v1/requests/" + url.PathEscape(pos[0])
	if *wait > 0 {
		path += "?wait=" + wait.String()
	}
	var rec protocol.Record
	if _, err := c.do(ctx, "GET", path, nil, &rec); err != nil {
		return err
	}
	return c.report(rec, true)
}

func (c *client) cancel(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageErr("cancel: want ID")
	}
	var rec protocol.Record
	if _, err := c.do(ctx, "DELETE", "/v1/requests/"+url.PathEscape(args[0]), nil, &rec); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "%s %s\n", rec.ID, rec.State)
	return nil
}

// watch follows a device's events by long-polling, and reports presence
// changes seen between polls, until ctx ends.
func (c *client) watch(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageErr("watch: want DEVICE")
	}
	dev := url.PathEscape(args[0])
	var after uint64
	online := -1
	for {
		var d protocol.DeviceInfo
		if _, err := c.do(ctx, "GET", "/v1/devices/"+dev, nil, &d); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if now := btoi(d.Online); now != online {
			online = now
			state := "offline"
			if d.Online {
				state = "online"
			}
			fmt.Fprintf(c.out, "%s presence %s %s\n", time.Now().Format(time.TimeOnly), args[0], state)
		}
		var evs struct {
			Events []protocol.EventRecord `json:"events"`
		}
		path := fmt.Sprintf("/v1/devices/%s/events?after=%d&wait=20s", dev, after)
		if _, err := c.do(ctx, "GET", path, nil, &evs); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, e := range evs.Events {
			fmt.Fprintf(c.out, "%s event %d %s %s\n", e.Time.Local().Format(time.TimeOnly), e.Seq, e.Name, e.Data)
			after = max(after, e.Seq)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
