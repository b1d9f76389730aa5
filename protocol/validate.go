package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// MaxTimeoutMs bounds a request's timeout: 7 days.
const MaxTimeoutMs = 7 * 24 * 3600 * 1000

func invalid(format string, args ...any) error {
	return Errorf(CodeBadFrame, format, args...)
}

// ValidID reports whether s is a usable identifier: 1..MaxIDLen bytes of
// printable ASCII without spaces. Request ids, device ids, method names and
// event names all follow this rule.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

func checkID(field, s string) error {
	if !ValidID(s) {
		return invalid("%s: want 1..%d printable characters, got %q", field, MaxIDLen, clip(s))
	}
	return nil
}

// checkIDAt is checkID for element i of the list named list (then
// suffix), whose name is only spelled out for an invalid s: acks check
// every id they carry.
func checkIDAt(list string, i int, suffix, s string) error {
	if ValidID(s) {
		return nil
	}
	return checkID(list+"["+strconv.Itoa(i)+"]"+suffix, s)
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// nonNull reports whether raw holds a JSON value other than null.
func nonNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}

func (m *Hello) validate() error {
	if m.Agent == "" {
		return invalid("hello: agent version missing")
	}
	for i, meth := range m.Methods {
		if err := checkIDAt("hello: methods", i, "", meth); err != nil {
			return err
		}
	}
	for i, r := range m.Resources {
		if err := checkIDAt("hello: resources", i, ".name", r.Name); err != nil {
			return err
		}
		if _, isObject := r.Info.(map[string]any); r.Info != nil && !isObject {
			return invalid("hello: resources[%d].info: want an object", i)
		}
	}
	if m.Instance != "" {
		if err := checkID("hello: instance", m.Instance); err != nil {
			return err
		}
	}
	for i, id := range m.Running {
		if err := checkIDAt("hello: running", i, "", id); err != nil {
			return err
		}
	}
	if m.Journal.Outbox < 0 || m.Journal.Entries < 0 {
		return invalid("hello: negative journal counts")
	}
	return nil
}

func (m *Welcome) validate() error {
	if err := checkID("welcome: session", m.Session); err != nil {
		return err
	}
	if err := checkID("welcome: device", m.Device); err != nil {
		return err
	}
	if m.MaxFrame < 1024 {
		return invalid("welcome: max_frame %d below 1024", m.MaxFrame)
	}
	if m.PingMs <= 0 {
		return invalid("welcome: ping_ms must be positive")
	}
	return nil
}

func (m *Pull) validate() error {
	if m.N < 1 || m.N > MaxPull {
		return invalid("pull: n must be 1..%d, got %d", MaxPull, m.N)
	}
	return nil
}

func (m *Request) validate() error {
	if err := checkID("request: id", m.ID); err != nil {
		return err
	}
	if err := checkID("request: method", m.Method); err != nil {
		return err
	}
	if m.TimeoutMs <= 0 || m.TimeoutMs > MaxTimeoutMs {
		return invalid("request: timeout_ms must be 1..%d, got %d", MaxTimeoutMs, m.TimeoutMs)
	}
	if m.Attempt < 1 {
		return invalid("request: attempt must be >= 1, got %d", m.Attempt)
	}
	return nil
}

func (m *Result) validate() error {
	if err := checkID("result: id", m.ID); err != nil {
		return err
	}
	if !Terminal(m.State) {
		return invalid("result: state %q is not terminal", clip(m.State))
	}
	if m.State == StateSucceeded {
		if m.Error != nil {
			return invalid("result: succeeded with an error")
		}
	} else {
		if m.Error == nil || m.Error.Code == "" {
			return invalid("result: state %s needs an error with a code", m.State)
		}
		if nonNull(m.Value) {
			return invalid("result: state %s must not carry a value", m.State)
		}
	}
	if m.RunMs < 0 {
		return invalid("result: negative run_ms")
	}
	return nil
}

func (m *Ack) validate() error {
	if len(m.IDs) == 0 && m.Events == 0 {
		return invalid("ack: acknowledges nothing")
	}
	for i, id := range m.IDs {
		if err := checkIDAt("ack: ids", i, "", id); err != nil {
			return err
		}
	}
	return nil
}

func (m *Cancel) validate() error { return checkID("cancel: id", m.ID) }

func (m *Event) validate() error {
	if m.Seq == 0 {
		return invalid("event: seq must be >= 1")
	}
	if err := checkID("event: name", m.Name); err != nil {
		return err
	}
	if m.AgeMs < 0 {
		return invalid("event: negative age_ms")
	}
	return nil
}

func (m *Error) validate() error {
	if m.Code == "" {
		return invalid("error: code missing")
	}
	return nil
}
