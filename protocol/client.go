package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Duration is a time.Duration that reads from JSON as either a Go duration
// string ("1.5s", "250ms") or a number of milliseconds, and writes as a
// string. Web apps may send whichever is handier.
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(time.Duration(d).String())), nil
}

// UnmarshalJSON accepts "1.5s" or 1500.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", clip(s), err)
		}
		*d = Duration(v)
		return nil
	}
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("duration: want a string like \"5s\" or milliseconds: %w", err)
	}
	if ms < 0 || ms > MaxTimeoutMs {
		return fmt.Errorf("duration %v ms out of range", ms)
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// Submit is the body of POST /v1/devices/{id}/requests.
type Submit struct {
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	Timeout    Duration        `json:"timeout,omitempty"` // 0 means the relay's default
	Idempotent bool            `json:"idempotent,omitempty"`
	// Key, when set, makes the submission safe to retry: the relay stores
	// the request it creates under the key, and a later submission with
	// the same key (by the same client) gets that request instead of a
	// new one, for as long as the relay keeps it. REST clients may send
	// it as the Idempotency-Key header.
	Key string `json:"key,omitempty"`
}

// Validate checks a submission from a client.
func (s *Submit) Validate() error {
	if !ValidID(s.Method) {
		return Errorf(CodeBadParams, "method: want 1..%d printable characters, got %q", MaxIDLen, clip(s.Method))
	}
	if s.Timeout < 0 || time.Duration(s.Timeout) > MaxTimeoutMs*time.Millisecond {
		return Errorf(CodeBadParams, "timeout must be between 0 and 7 days")
	}
	if len(s.Params) > 0 && !json.Valid(s.Params) {
		return Errorf(CodeBadParams, "params is not valid JSON")
	}
	// json.Valid lets invalid UTF-8 through, and params travel verbatim
	// in WebSocket text frames (to the agent, to /v1/client), which must
	// be UTF-8: a peer that checks, a browser for one, drops the
	// connection at such a frame, and again at every resend.
	if !utf8.Valid(s.Params) {
		return Errorf(CodeBadParams, "params is not valid UTF-8")
	}
	if s.Key != "" && !ValidID(s.Key) {
		return Errorf(CodeBadParams, "key: want 1..%d printable characters, got %q", MaxIDLen, clip(s.Key))
	}
	return nil
}

// Record is the request object clients see (DESIGN §6).
type Record struct {
	ID         string          `json:"id"`
	Device     string          `json:"device"`
	Method     string          `json:"method"`
	Params     json.RawMessage `json:"params,omitempty"`
	State      string          `json:"state"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *Failure        `json:"error,omitempty"`
	Attempts   int             `json:"attempts"`
	Idempotent bool            `json:"idempotent,omitempty"`
	Timeout    Duration        `json:"timeout"`
	Created    time.Time       `json:"created"`
	Finished   *time.Time      `json:"finished,omitempty"`
	RunMs      int64           `json:"run_ms,omitempty"`
}

// DeviceInfo is one entry of GET /v1/devices.
type DeviceInfo struct {
	ID        string     `json:"id"`
	Online    bool       `json:"online"`
	LastSeen  *time.Time `json:"last_seen,omitempty"`
	Agent     string     `json:"agent,omitempty"`
	Board     string     `json:"board,omitempty"`
	Methods   []string   `json:"methods,omitempty"`
	Resources []Resource `json:"resources,omitempty"`
	Queued    int        `json:"queued"`
}

// EventRecord is one event as clients see it (GET /v1/devices/{id}/events).
type EventRecord struct {
	Seq  uint64          `json:"seq"`
	Name string          `json:"name"`
	Data json.RawMessage `json:"data,omitempty"`
	Time time.Time       `json:"time"`
}

// APIError is the body of every non-2xx answer of the relay's HTTP API.
type APIError struct {
	Error Failure `json:"error"`
}
