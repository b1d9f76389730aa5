package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Decode parses and validates one frame. Frames longer than max bytes are
// refused before parsing (max <= 0 means MaxFrame). Every error is a
// *Failure whose Code is CodeTooLarge, CodeUnknownType or CodeBadFrame, so it
// can be sent back in an Error frame unchanged.
func Decode(frame []byte, max int) (Message, error) {
	if max <= 0 {
		max = MaxFrame
	}
	return decodeFrom(frame, max, newMessage)
}

// Encode returns the frame for m: its JSON object with "type" first. It does
// not validate m; senders build valid messages.
func Encode(m Message) ([]byte, error) {
	if a, ok := m.(frameAppender); ok {
		return a.appendFrame(make([]byte, 0, frameSize(m))), nil
	}
	return encodeReflect(m)
}

// AppendEncode appends m's frame, as Encode returns it, to b, so that a
// sender can encode into a buffer it reuses.
func AppendEncode(b []byte, m Message) ([]byte, error) {
	if a, ok := m.(frameAppender); ok {
		return a.appendFrame(b), nil
	}
	f, err := encodeReflect(m)
	if err != nil {
		return b, err
	}
	return append(b, f...), nil
}

// frameAppender is implemented by the messages sent once or more for
// every request (request, result, pull, ack; call, accepted, result on the
// client socket): they write their frames without reflection, byte for
// byte as encodeReflect does.
type frameAppender interface {
	appendFrame(b []byte) []byte
}

// frameSize guesses the length of m's frame, so that Encode allocates its
// buffer once: the fixed members take up to a few hundred bytes, raw
// values and ids their own length, more if they need escaping.
func frameSize(m Message) int {
	switch m := m.(type) {
	case *Request:
		return 128 + len(m.ID) + len(m.Method) + len(m.Params)
	case *Result:
		return 128 + len(m.ID) + len(m.Value) + failureSize(m.Error)
	case *Ack:
		return 32 + 40*len(m.IDs)
	case *ClientCall:
		return 128 + len(m.Ref) + len(m.Device) + len(m.Method) + len(m.Params)
	case *ClientAccepted:
		return 64 + len(m.Ref) + recordSize(&m.Request)
	case *ClientResult:
		return 96 + len(m.Ref) + len(m.Result) + failureSize(m.Error) + recordSize(&m.Request)
	}
	return 64
}

func recordSize(r *Record) int {
	return 256 + len(r.ID) + len(r.Device) + len(r.Method) + len(r.Params) + len(r.Result) + failureSize(r.Error)
}

func failureSize(f *Failure) int {
	if f == nil {
		return 0
	}
	return 32 + len(f.Code) + len(f.Message)
}

// encodeReflect is Encode through json.Marshal.
func encodeReflect(m Message) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode %s: %w", m.MsgType(), err)
	}
	if len(body) < 2 || body[0] != '{' {
		return nil, fmt.Errorf("protocol: encode %s: not an object", m.MsgType())
	}
	var b bytes.Buffer
	b.Grow(len(body) + 16 + len(m.MsgType()))
	b.WriteString(`{"type":"`)
	b.WriteString(m.MsgType())
	b.WriteByte('"')
	if len(body) > 2 {
		b.WriteByte(',')
	}
	b.Write(body[1:])
	return b.Bytes(), nil
}
