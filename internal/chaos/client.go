package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// client is device A: it talks to the relay's REST API directly, never
// through the fault proxy.
type client struct {
	base   string
	key    string
	device string
	// submitHC opens a fresh connection per submit, so a submit to a dead
	// relay fails while dialling, which is the one failure known to be
	// safe to retry.
	submitHC *http.Client
	hc       *http.Client
}

func newClient(base, key, device string) *client {
	return &client{
		base:   base,
		key:    key,
		device: device,
		submitHC: &http.Client{
			Timeout:   20 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true},
		},
		hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
	}
}

func (c *client) close() {
	c.submitHC.CloseIdleConnections()
	c.hc.CloseIdleConnections()
}

// submitOutcome says what became of one submit.
type submitOutcome int

const (
	submitted submitOutcome = iota // the relay answered with an id
	unknown                        // sent, but the answer was lost
)

// errFatal marks an answer that means the driver itself is wrong.
var errFatal = errors.New("chaos: relay refused a valid submit")

// submit posts sub until the relay answers with an id. A submit that
// cannot have been stored is retried (counted in retries); one whose
// answer was lost is sent again with its key (counted in resent), which
// the relay answers with the request the key made, if it stored one. The
// outcome stays unknown only if ctx ends first.
func (c *client) submit(ctx context.Context, sub protocol.Submit) (id string, out submitOutcome, retries, resent int, err error) {
	body, err := json.Marshal(sub)
	if err != nil {
		return "", unknown, 0, 0, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return "", unknown, retries, resent, err
		}
		req, err := http.NewRequestWithContext(ctx, "POST", c.base+"/v1/devices/"+c.device+"/requests", bytes.NewReader(body))
		if err != nil {
			return "", unknown, retries, resent, err
		}
		req.Header.Set("Authorization", "Bearer "+c.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.submitHC.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return "", unknown, retries, resent, ctx.Err()
			}
			if isDialError(err) {
				retries++
			} else {
				resent++
			}
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		data, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case rerr != nil:
			resent++
			sleep(ctx, 50*time.Millisecond)
		case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
			var rec protocol.Record
			if err := json.Unmarshal(data, &rec); err != nil || rec.ID == "" {
				return "", unknown, retries, resent, fmt.Errorf("chaos: submit answer %q: %v", data, err)
			}
			return rec.ID, submitted, retries, resent, nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
			// Refused before anything was stored: safe to try again.
			retries++
			sleep(ctx, 100*time.Millisecond)
		case resp.StatusCode >= 500:
			// The relay's storage failed, or it died answering: the key
			// finds what it stored, if anything.
			resent++
			sleep(ctx, 100*time.Millisecond)
		default:
			return "", unknown, retries, resent, fmt.Errorf("%w: %d %s", errFatal, resp.StatusCode, data)
		}
	}
}

// errGone is a 404 for a request id.
var errGone = errors.New("chaos: relay does not know the request")

// get returns request id's record, long-polling up to wait for it to end.
// Transport errors (the relay being restarted) are returned for the caller
// to retry.
func (c *client) get(ctx context.Context, id string, wait time.Duration) (protocol.Record, error) {
	url := c.base + "/v1/requests/" + id
	if wait > 0 {
		url += "?wait=" + wait.String()
	}
	var rec protocol.Record
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return rec, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := c.hc.Do(req)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return rec, err
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted:
		err = json.Unmarshal(data, &rec)
		return rec, err
	case http.StatusNotFound:
		return rec, errGone
	}
	return rec, fmt.Errorf("chaos: get %s: %d %s", id, resp.StatusCode, data)
}

// online reports whether the relay sees the device connected.
func (c *client) online(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/devices/"+c.device, nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var info protocol.DeviceInfo
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&info) != nil {
		return false
	}
	return info.Online
}

// healthy reports whether the relay answers /healthz.
func (c *client) healthy(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// isDialError reports whether err happened before a connection existed,
// so the request cannot have reached the relay.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitUntil polls cond every step until it holds, d passes or ctx ends.
func waitUntil(ctx context.Context, d, step time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || !sleep(ctx, step) {
			return false
		}
	}
}
