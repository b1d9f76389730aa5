package protocol

// Decoding without reflection of the frames that pass once or more per
// request: request, result, pull and ack on /v1/agent; call, accepted and
// result on /v1/client; and the body of a REST submission. Through encoding/json (a validity scan of the
// whole frame, then a second pass by reflection, a string and a lookup for
// every key) their decoding was a large share of the relay's and the
// agent's CPU. The decoders here read them in one pass: the JSON that
// Encode writes (appendFrame, record_json.go) and what a hand-written
// sender may vary in it (whitespace, member order).
//
// The rule that keeps this safe: a decoder reads only what it is sure
// encoding/json reads the same way, and gives up on anything else. It gives
// up on a key that is not exactly a field's name (encoding/json matches
// keys regardless of case and skips unknown ones), a key that came before
// in the same object, a string with an escape, a control byte or invalid
// UTF-8 (encoding/json turns it into U+FFFD), null anywhere, a number that
// is not a plain integer within its field's range, a duration that is not
// a string, a missing type, and anything but whitespace after the object.
// decodeFrom then decodes the frame with encoding/json as it always did. So
// a frame the fast path takes becomes the message encoding/json would make
// of it, and any other frame gets the message or the error it got before.
// FuzzFastDecode holds the decoders to the first half of that.

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// fastDecoder is implemented by the frames decodeFrom can read without
// reflection. decodeFast fills the message from frame and reports whether
// it could; on false the message may be partly filled and must be dropped.
type fastDecoder interface {
	decodeFast(frame []byte) bool
}

// testHookFastDecode, when a test sets it, is called with every message
// decodeFrom read on the fast path.
var testHookFastDecode func(Message)

// decodeFast fills m from frame if m has a fast decoder that takes frame.
func decodeFast(m Message, frame []byte) bool {
	d, ok := m.(fastDecoder)
	if !ok || !d.decodeFast(frame) {
		return false
	}
	if testHookFastDecode != nil {
		testHookFastDecode(m)
	}
	return true
}

// maxRawDepth bounds the nesting of a raw value. encoding/json refuses
// frames nested more than 10000 deep, counting the objects around the
// value, which json.Valid on the value alone cannot see; a value nested
// deeper than this (no real one is) takes the general path.
const maxRawDepth = 1000

// scanner reads the JSON of one frame. Its methods read one token or value
// each, after optional whitespace; the first thing they are unsure of
// clears ok, after which the results do not matter and the decode fails.
type scanner struct {
	b     []byte
	i     int  // next byte to read
	ok    bool // nothing refused so far
	typed bool // the frame's type member was read
}

func newScanner(frame []byte) scanner { return scanner{b: frame, ok: true} }

// ws skips JSON whitespace.
func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// expect reads the byte c.
func (s *scanner) expect(c byte) {
	s.ws()
	if s.ok && s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return
	}
	s.ok = false
}

// end reports whether the whole frame was read: a type member, and nothing
// but whitespace after the object.
func (s *scanner) end() bool {
	s.ws()
	return s.ok && s.typed && s.i == len(s.b)
}

// more reports whether the object or array being read, which close ends,
// has another member or element. It reads the comma before one that is
// not the first, or the closing byte after the last.
func (s *scanner) more(close byte, first bool) bool {
	s.ws()
	if !s.ok || s.i == len(s.b) {
		s.ok = false
		return false
	}
	if s.b[s.i] == close {
		s.i++
		return false
	}
	if !first {
		s.expect(',')
	}
	return s.ok
}

// key reads a member's key and the colon after it, and returns the one of
// names it equals. Bit i of seen marks names[i] as read in this object. A
// key not in names, or one already read, fails: encoding/json would match
// it regardless of case, skip it, or let the last one win.
func (s *scanner) key(seen *uint32, names ...string) string {
	k := s.plain()
	s.expect(':')
	if !s.ok {
		return ""
	}
	for i, name := range names {
		if string(k) == name {
			if *seen&(1<<i) != 0 {
				break
			}
			*seen |= 1 << i
			return name
		}
	}
	s.ok = false
	return ""
}

// object starts reading an object, whose members member then reads
// one by one:
//
//	for o := s.object(); s.member(&o, names...); {
//		switch o.key { ... read the value ... }
//	}
func (s *scanner) object() members {
	s.expect('{')
	return members{first: true}
}

// members is the state of an object being read.
type members struct {
	key   string // of the member whose value is next
	seen  uint32 // keys read so far, as bits of names (see key)
	first bool
}

// member reads the next member's key, one of names, into o.key, and
// reports whether there is one; after the last, the object has been read.
func (s *scanner) member(o *members, names ...string) bool {
	if !s.more('}', o.first) {
		return false
	}
	o.first = false
	o.key = s.key(&o.seen, names...)
	return true
}

// typ reads the frame's type, which must be want.
func (s *scanner) typ(want string) {
	if string(s.plain()) != want {
		s.ok = false
	}
	s.typed = true
}

// plain reads a string without escapes or control bytes, in valid UTF-8,
// and returns its bytes: a string encoding/json decodes to these bytes.
func (s *scanner) plain() []byte {
	s.expect('"')
	if !s.ok {
		return nil
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		if c := s.b[s.i]; c == '"' {
			p := s.b[start:s.i]
			s.i++
			if !utf8.Valid(p) {
				s.ok = false
			}
			return p
		} else if c < 0x20 || c == '\\' {
			break
		}
	}
	s.ok = false
	return nil
}

// str reads a plain string.
func (s *scanner) str() string { return string(s.plain()) }

// strs reads an array of plain strings. Like encoding/json it returns an
// empty, non-nil slice for [].
func (s *scanner) strs() []string {
	v := []string{}
	s.expect('[')
	for first := true; s.more(']', first); first = false {
		v = append(v, s.str())
	}
	return v
}

// number reads a plain JSON integer, -?(0|[1-9][0-9]*). A fraction or an
// exponent is left unread, so that what the caller reads next fails.
func (s *scanner) number() []byte {
	s.ws()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	d := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	if s.i == d || s.b[d] == '0' && s.i > d+1 {
		s.ok = false
	}
	return s.b[start:s.i]
}

// int reads a plain integer that fits in bits, as encoding/json reads an
// int field of that size.
func (s *scanner) int(bits int) int64 {
	n, err := strconv.ParseInt(string(s.number()), 10, bits)
	if err != nil {
		s.ok = false
	}
	return n
}

// uint reads a plain integer that fits a uint64; a minus sign fails.
func (s *scanner) uint() uint64 {
	n, err := strconv.ParseUint(string(s.number()), 10, 64)
	if err != nil {
		s.ok = false
	}
	return n
}

// bool reads true or false.
func (s *scanner) bool() bool {
	s.ws()
	switch rest := s.b[s.i:]; {
	case bytes.HasPrefix(rest, []byte("true")):
		s.i += 4
		return true
	case bytes.HasPrefix(rest, []byte("false")):
		s.i += 5
		return false
	}
	s.ok = false
	return false
}

// raw reads any value but null and returns a copy of its bytes as they
// stand, which is what encoding/json stores in a json.RawMessage. It finds
// the value's end by counting brackets outside strings, then leaves the
// value's syntax to json.Valid.
func (s *scanner) raw() json.RawMessage {
	s.ws()
	start, depth := s.i, 0
scan:
	for ; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '"':
			for s.i++; s.i < len(s.b) && s.b[s.i] != '"'; s.i++ {
				if s.b[s.i] == '\\' {
					s.i++
				}
			}
		case '{', '[':
			if depth++; depth > maxRawDepth {
				s.ok = false
				return nil
			}
		case '}', ']':
			if depth == 0 {
				break scan
			}
			depth--
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				break scan
			}
		}
	}
	if !s.ok || s.i > len(s.b) { // a string ran past the end
		s.ok = false
		return nil
	}
	v := s.b[start:s.i]
	if string(v) == "null" || !json.Valid(v) {
		s.ok = false
		return nil
	}
	return append(json.RawMessage(nil), v...)
}

// duration reads a Duration as Encode writes it, a string for
// time.ParseDuration, which is all Duration.UnmarshalJSON does with a
// string. The milliseconds it also accepts take the general path.
func (s *scanner) duration() Duration {
	p := s.plain()
	if !s.ok {
		return 0
	}
	d, err := time.ParseDuration(string(p))
	if err != nil {
		s.ok = false
	}
	return Duration(d)
}

// timestamp reads a time through time.Time.UnmarshalJSON, as encoding/json
// does; for a plain string it sees the same bytes.
func (s *scanner) timestamp() time.Time {
	s.ws()
	start := s.i
	s.plain()
	var t time.Time
	if !s.ok || t.UnmarshalJSON(s.b[start:s.i]) != nil {
		s.ok = false
	}
	return t
}

// failure reads the object of a Failure.
func (s *scanner) failure() *Failure {
	f := new(Failure)
	for o := s.object(); s.member(&o, "code", "message"); {
		switch o.key {
		case "code":
			f.Code = s.str()
		case "message":
			f.Message = s.str()
		}
	}
	return f
}

// record reads the object of a Record into r.
func (s *scanner) record(r *Record) {
	for o := s.object(); s.member(&o, "id", "device", "method", "params", "state", "result", "error",
		"attempts", "idempotent", "timeout", "created", "finished", "run_ms"); {
		switch o.key {
		case "id":
			r.ID = s.str()
		case "device":
			r.Device = s.str()
		case "method":
			r.Method = s.str()
		case "params":
			r.Params = s.raw()
		case "state":
			r.State = s.str()
		case "result":
			r.Result = s.raw()
		case "error":
			r.Error = s.failure()
		case "attempts":
			r.Attempts = int(s.int(strconv.IntSize))
		case "idempotent":
			r.Idempotent = s.bool()
		case "timeout":
			r.Timeout = s.duration()
		case "created":
			r.Created = s.timestamp()
		case "finished":
			t := s.timestamp()
			r.Finished = &t
		case "run_ms":
			r.RunMs = s.int(64)
		}
	}
}

func (m *Request) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "id", "method", "params", "timeout_ms", "attempt", "idempotent"); {
		switch o.key {
		case "type":
			s.typ(TypeRequest)
		case "id":
			m.ID = s.str()
		case "method":
			m.Method = s.str()
		case "params":
			m.Params = s.raw()
		case "timeout_ms":
			m.TimeoutMs = s.int(64)
		case "attempt":
			m.Attempt = int(s.int(strconv.IntSize))
		case "idempotent":
			m.Idempotent = s.bool()
		}
	}
	return s.end()
}

func (m *Result) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "id", "state", "value", "error", "run_ms"); {
		switch o.key {
		case "type":
			s.typ(TypeResult)
		case "id":
			m.ID = s.str()
		case "state":
			m.State = s.str()
		case "value":
			m.Value = s.raw()
		case "error":
			m.Error = s.failure()
		case "run_ms":
			m.RunMs = s.int(64)
		}
	}
	return s.end()
}

func (m *Pull) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "n"); {
		switch o.key {
		case "type":
			s.typ(TypePull)
		case "n":
			m.N = int(s.int(strconv.IntSize))
		}
	}
	return s.end()
}

func (m *Ack) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "ids", "events"); {
		switch o.key {
		case "type":
			s.typ(TypeAck)
		case "ids":
			m.IDs = s.strs()
		case "events":
			m.Events = s.uint()
		}
	}
	return s.end()
}

func (m *ClientCall) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "ref", "device", "method", "params", "timeout", "idempotent", "key"); {
		switch o.key {
		case "type":
			s.typ(TypeCall)
		case "ref":
			m.Ref = s.str()
		case "device":
			m.Device = s.str()
		case "method":
			m.Method = s.str()
		case "params":
			m.Params = s.raw()
		case "timeout":
			m.Timeout = s.duration()
		case "idempotent":
			m.Idempotent = s.bool()
		case "key":
			m.Key = s.str()
		}
	}
	return s.end()
}

func (m *ClientAccepted) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "ref", "id", "request"); {
		switch o.key {
		case "type":
			s.typ(TypeAccepted)
		case "ref":
			m.Ref = s.str()
		case "id":
			m.ID = s.str()
		case "request":
			s.record(&m.Request)
		}
	}
	return s.end()
}

func (m *ClientResult) decodeFast(frame []byte) bool {
	s := newScanner(frame)
	for o := s.object(); s.member(&o, "type", "id", "ref", "state", "result", "error", "request"); {
		switch o.key {
		case "type":
			s.typ(TypeResult)
		case "id":
			m.ID = s.str()
		case "ref":
			m.Ref = s.str()
		case "state":
			m.State = s.str()
		case "result":
			m.Result = s.raw()
		case "error":
			m.Error = s.failure()
		case "request":
			s.record(&m.Request)
		}
	}
	return s.end()
}

// DecodeSubmitFast reads the JSON body of a REST submission without
// reflection, under the same rule as the frames above: when it reports
// false the caller decodes body with encoding/json, as it always did.
func DecodeSubmitFast(body []byte) (Submit, bool) {
	var m Submit
	if !m.decodeFast(body) {
		return Submit{}, false
	}
	return m, true
}

func (m *Submit) decodeFast(body []byte) bool {
	s := newScanner(body)
	s.typed = true // a submission names no type
	for o := s.object(); s.member(&o, "method", "params", "timeout", "idempotent", "key"); {
		switch o.key {
		case "method":
			m.Method = s.str()
		case "params":
			m.Params = s.raw()
		case "timeout":
			m.Timeout = s.duration()
		case "idempotent":
			m.Idempotent = s.bool()
		case "key":
			m.Key = s.str()
		}
	}
	return s.end()
}
