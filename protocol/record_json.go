package protocol

import (
	"encoding/json"
	"strconv"
	"time"
)

// AppendJSON appends r to b as a JSON object with the fields and names
// json.Marshal gives it. It exists because a relay encodes every request
// three or four times on its way (stored when submitted, delivered and
// finished, then answered), and json.Marshal, through reflection and a
// compaction of every raw field, was the largest part of that work.
//
// Params and Result are copied as they are: they must hold valid JSON,
// as they do once decoded from a frame or a body. Unlike json.Marshal,
// nothing in them is compacted or HTML-escaped; the value is the same.
func (r *Record) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = AppendJSONString(b, r.ID)
	b = append(b, `,"device":`...)
	b = AppendJSONString(b, r.Device)
	b = append(b, `,"method":`...)
	b = AppendJSONString(b, r.Method)
	if len(r.Params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, r.Params...)
	}
	b = append(b, `,"state":`...)
	b = AppendJSONString(b, r.State)
	if len(r.Result) > 0 {
		b = append(b, `,"result":`...)
		b = append(b, r.Result...)
	}
	if r.Error != nil {
		b = appendFailure(append(b, `,"error":`...), r.Error)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	if r.Idempotent {
		b = append(b, `,"idempotent":true`...)
	}
	b = append(b, `,"timeout":`...)
	b = AppendJSONDuration(b, time.Duration(r.Timeout))
	b = append(b, `,"created":`...)
	b = AppendJSONTime(b, r.Created)
	if r.Finished != nil {
		b = append(b, `,"finished":`...)
		b = AppendJSONTime(b, *r.Finished)
	}
	if r.RunMs != 0 {
		b = append(b, `,"run_ms":`...)
		b = strconv.AppendInt(b, r.RunMs, 10)
	}
	return append(b, '}')
}

func (m *Request) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"request","id":`...)
	b = AppendJSONString(b, m.ID)
	b = append(b, `,"method":`...)
	b = AppendJSONString(b, m.Method)
	if len(m.Params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, m.Params...)
	}
	b = append(b, `,"timeout_ms":`...)
	b = strconv.AppendInt(b, m.TimeoutMs, 10)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(m.Attempt), 10)
	if m.Idempotent {
		b = append(b, `,"idempotent":true`...)
	}
	return append(b, '}')
}

func (m *Result) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"result","id":`...)
	b = AppendJSONString(b, m.ID)
	b = append(b, `,"state":`...)
	b = AppendJSONString(b, m.State)
	if len(m.Value) > 0 {
		b = append(b, `,"value":`...)
		b = append(b, m.Value...)
	}
	if m.Error != nil {
		b = appendFailure(append(b, `,"error":`...), m.Error)
	}
	b = append(b, `,"run_ms":`...)
	b = strconv.AppendInt(b, m.RunMs, 10)
	return append(b, '}')
}

func (m *Pull) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"pull","n":`...)
	b = strconv.AppendInt(b, int64(m.N), 10)
	return append(b, '}')
}

func (m *Ack) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"ack"`...)
	if len(m.IDs) > 0 {
		b = append(b, `,"ids":[`...)
		for i, id := range m.IDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendJSONString(b, id)
		}
		b = append(b, ']')
	}
	if m.Events != 0 {
		b = append(b, `,"events":`...)
		b = strconv.AppendUint(b, m.Events, 10)
	}
	return append(b, '}')
}

func (m *ClientCall) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"call"`...)
	if m.Ref != "" {
		b = append(b, `,"ref":`...)
		b = AppendJSONString(b, m.Ref)
	}
	b = append(b, `,"device":`...)
	b = AppendJSONString(b, m.Device)
	b = append(b, `,"method":`...)
	b = AppendJSONString(b, m.Method)
	if len(m.Params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, m.Params...)
	}
	if m.Timeout != 0 {
		b = append(b, `,"timeout":`...)
		b = AppendJSONDuration(b, time.Duration(m.Timeout))
	}
	if m.Idempotent {
		b = append(b, `,"idempotent":true`...)
	}
	if m.Key != "" {
		b = append(b, `,"key":`...)
		b = AppendJSONString(b, m.Key)
	}
	return append(b, '}')
}

func (m *ClientAccepted) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"accepted"`...)
	if m.Ref != "" {
		b = append(b, `,"ref":`...)
		b = AppendJSONString(b, m.Ref)
	}
	b = append(b, `,"id":`...)
	b = AppendJSONString(b, m.ID)
	b = append(b, `,"request":`...)
	b = m.Request.AppendJSON(b)
	return append(b, '}')
}

func (m *ClientResult) appendFrame(b []byte) []byte {
	b = append(b, `{"type":"result","id":`...)
	b = AppendJSONString(b, m.ID)
	if m.Ref != "" {
		b = append(b, `,"ref":`...)
		b = AppendJSONString(b, m.Ref)
	}
	b = append(b, `,"state":`...)
	b = AppendJSONString(b, m.State)
	if len(m.Result) > 0 {
		b = append(b, `,"result":`...)
		b = append(b, m.Result...)
	}
	if m.Error != nil {
		b = appendFailure(append(b, `,"error":`...), m.Error)
	}
	b = append(b, `,"request":`...)
	b = m.Request.AppendJSON(b)
	return append(b, '}')
}

func appendFailure(b []byte, f *Failure) []byte {
	b = append(b, `{"code":`...)
	b = AppendJSONString(b, f.Code)
	b = append(b, `,"message":`...)
	b = AppendJSONString(b, f.Message)
	return append(b, '}')
}

// AppendJSONTime appends t as json.Marshal does (RFC 3339, nanoseconds
// as needed, quoted).
func AppendJSONTime(b []byte, t time.Time) []byte {
	if y := t.Year(); y < 0 || y > 9999 {
		// Out of RFC 3339's range: let json.Marshal say what it says.
		enc, err := json.Marshal(t)
		if err != nil {
			return append(b, "null"...)
		}
		return append(b, enc...)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// AppendJSONDuration appends d as a JSON string, as Duration's
// MarshalJSON writes it. Its text needs no escaping (digits, '.', '-',
// unit letters and 'µ'), and appended as it is it costs no allocation:
// passed to AppendJSONString, which may hand it to json.Marshal, it would
// be moved to the heap.
func AppendJSONDuration(b []byte, d time.Duration) []byte {
	b = append(b, '"')
	b = append(b, d.String()...)
	return append(b, '"')
}

// AppendJSONString appends s as a JSON string, byte for byte as
// json.Marshal writes it.
func AppendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			enc, _ := json.Marshal(s) // a string always encodes
			return append(b, enc...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
