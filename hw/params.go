package hw

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
)

// params holds a request's parameters by field name. Each accessor returns
// a bad_params *protocol.Failure naming the field when the value is missing
// or malformed.
type params map[string]json.RawMessage

// decodeParams parses a params object and rejects fields other than allowed.
// Absent or null params are an empty object.
func decodeParams(raw json.RawMessage, allowed ...string) (params, error) {
	p := params{}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return p, nil
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, protocol.Errorf(protocol.CodeBadParams, "params: want a JSON object")
	}
	var unknown []string
	for k := range p {
		if !contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, protocol.Errorf(protocol.CodeBadParams, "%s: unknown field (want %s)", unknown[0], strings.Join(allowed, ", "))
	}
	return p, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func badParam(field, format string, args ...any) error {
	return protocol.Errorf(protocol.CodeBadParams, field+": "+format, args...)
}

// has reports whether field is present and not null.
func (p params) has(field string) bool {
	v, ok := p[field]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

func (p params) required(field string) error {
	if !p.has(field) {
		return badParam(field, "required")
	}
	return nil
}

// str returns a required, non-empty string field.
func (p params) str(field string) (string, error) {
	if err := p.required(field); err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(p[field], &s); err != nil {
		return "", badParam(field, "want a string, got %s", clip(p[field]))
	}
	if s == "" {
		return "", badParam(field, "required")
	}
	return s, nil
}

// level returns a required level: "high"/"low", true/false or 1/0.
func (p params) level(field string) (gpio.Level, error) {
	if err := p.required(field); err != nil {
		return gpio.Low, err
	}
	v := string(bytes.TrimSpace(p[field]))
	var s string
	if json.Unmarshal(p[field], &s) == nil {
		v = s // a string as JSON spells it, escapes included
	}
	switch strings.ToLower(v) {
	case "high", "true", "1":
		return gpio.High, nil
	case "low", "false", "0":
		return gpio.Low, nil
	}
	return gpio.Low, badParam(field, `want "high" or "low", got %s`, clip(p[field]))
}

// duration returns a required duration in (0, limit]: a Go duration string
// or a number of milliseconds.
func (p params) duration(field string, limit time.Duration) (time.Duration, error) {
	if err := p.required(field); err != nil {
		return 0, err
	}
	var d time.Duration
	var s string
	var ms float64
	switch {
	case json.Unmarshal(p[field], &s) == nil:
		v, err := time.ParseDuration(s)
		if err != nil {
			return 0, badParam(field, `want a duration like "250ms" or milliseconds, got %q`, s)
		}
		d = v
	case json.Unmarshal(p[field], &ms) == nil:
		if ms > float64(limit/time.Millisecond) {
			return 0, badParam(field, "want at most %s, got %vms", limit, ms)
		}
		d = time.Duration(ms * float64(time.Millisecond))
	default:
		return 0, badParam(field, `want a duration like "250ms" or milliseconds, got %s`, clip(p[field]))
	}
	if d <= 0 || d > limit {
		return 0, badParam(field, "want more than 0 and at most %s, got %s", limit, d)
	}
	return d, nil
}

// count returns an optional integer in [0, limit]; absent is 0.
func (p params) count(field string, limit int) (int, error) {
	if !p.has(field) {
		return 0, nil
	}
	var f float64
	if err := json.Unmarshal(p[field], &f); err != nil || f != math.Trunc(f) {
		return 0, badParam(field, "want a whole number of bytes, got %s", clip(p[field]))
	}
	if f < 0 || f > float64(limit) {
		return 0, badParam(field, "want 0 to %d, got %v", limit, f)
	}
	return int(f), nil
}

// hexBytes returns an optional hex string field decoded, at most limit bytes.
func (p params) hexBytes(field string, limit int) ([]byte, error) {
	if !p.has(field) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(p[field], &s); err != nil {
		return nil, badParam(field, "want a hex string, got %s", clip(p[field]))
	}
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if len(s) > 2*limit {
		return nil, badParam(field, "want at most %d bytes, got %d", limit, len(s)/2)
	}
	if len(s)%2 != 0 {
		return nil, badParam(field, "odd number of hex digits (%d)", len(s))
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, badParam(field, "invalid hex: %v", err)
	}
	return b, nil
}

// addr returns a required 7-bit I2C address: a number or a string such as
// "0x48" or "72".
func (p params) addr(field string) (uint16, error) {
	if err := p.required(field); err != nil {
		return 0, err
	}
	var n float64
	var s string
	switch {
	case json.Unmarshal(p[field], &n) == nil:
	case json.Unmarshal(p[field], &s) == nil:
		v, err := strconv.ParseUint(s, 0, 16)
		if err != nil {
			return 0, badParam(field, `want an address like 72 or "0x48", got %q`, s)
		}
		n = float64(v)
	default:
		return 0, badParam(field, `want an address like 72 or "0x48", got %s`, clip(p[field]))
	}
	if n < 0 || n > 0x7f || n != math.Trunc(n) {
		return 0, badParam(field, "want a 7-bit address (0 to 0x7f), got %v", n)
	}
	return uint16(n), nil
}

// duty returns a required duty cycle: a fraction 0..1 or a percentage string.
func (p params) duty(field string) (gpio.Duty, error) {
	if err := p.required(field); err != nil {
		return 0, err
	}
	var f float64
	var s string
	switch {
	case json.Unmarshal(p[field], &f) == nil:
	case json.Unmarshal(p[field], &s) == nil:
		t := strings.TrimSpace(s)
		pct := strings.HasSuffix(t, "%")
		v, err := strconv.ParseFloat(strings.TrimSuffix(t, "%"), 64)
		if err != nil {
			return 0, badParam(field, `want 0..1 or a percentage like "50%%", got %q`, s)
		}
		if pct {
			v /= 100
		}
		f = v
	default:
		return 0, badParam(field, `want 0..1 or a percentage like "50%%", got %s`, clip(p[field]))
	}
	if !(f >= 0 && f <= 1) { // also rejects NaN
		return 0, badParam(field, "want 0 to 1 (0%% to 100%%), got %v", f)
	}
	return gpio.Duty(math.Round(f * float64(gpio.DutyMax))), nil
}

// maxPWMFrequency bounds pwm.set; no Pi PWM block is useful above it.
const maxPWMFrequency = 100 * physic.MegaHertz

// frequency returns a required frequency: a number of hertz or a string
// with a unit such as "1kHz".
func (p params) frequency(field string) (physic.Frequency, error) {
	if err := p.required(field); err != nil {
		return 0, err
	}
	var hz float64
	var s string
	var f physic.Frequency
	switch {
	case json.Unmarshal(p[field], &hz) == nil:
		if !(hz > 0 && hz <= float64(maxPWMFrequency/physic.Hertz)) {
			return 0, badParam(field, "want more than 0 and at most %s, got %vHz", maxPWMFrequency, hz)
		}
		f = physic.Frequency(hz * float64(physic.Hertz))
	case json.Unmarshal(p[field], &s) == nil:
		if err := f.Set(strings.TrimSpace(s)); err != nil {
			return 0, badParam(field, `want hertz or a frequency like "1kHz", got %q`, s)
		}
	default:
		return 0, badParam(field, `want hertz or a frequency like "1kHz", got %s`, clip(p[field]))
	}
	if f <= 0 || f > maxPWMFrequency {
		return 0, badParam(field, "want more than 0 and at most %s, got %s", maxPWMFrequency, f)
	}
	return f, nil
}

// clip shortens a raw value for an error message.
func clip(raw json.RawMessage) string {
	const max = 40
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}

// levelName is the wire form of a level.
func levelName(l gpio.Level) string {
	if l {
		return "high"
	}
	return "low"
}
