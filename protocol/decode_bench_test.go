package protocol

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// p64 is a 64-byte JSON value, the size of a typical small result or params.
var p64 = json.RawMessage(`{"p":"` + strings.Repeat("x", 56) + `"}`)

// benchDecode measures decode of the frame Encode writes for m.
func benchDecode(b *testing.B, decode func([]byte, int) (Message, error), m Message) {
	frame, err := Encode(m)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := decode(frame, 0); err != nil {
		b.Fatalf("%s: %v", frame, err)
	}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		decode(frame, 0)
	}
}

func BenchmarkDecodeResult(b *testing.B) {
	benchDecode(b, Decode, &Result{ID: "r0123456789abcdef0123456789abcdef", State: StateSucceeded, Value: p64, RunMs: 1})
}

func BenchmarkDecodeRequest(b *testing.B) {
	benchDecode(b, Decode, &Request{ID: "r0123456789abcdef0123456789abcdef", Method: "sys.ping", Params: p64, TimeoutMs: 30000, Attempt: 1})
}

func BenchmarkDecodePull(b *testing.B) {
	benchDecode(b, Decode, &Pull{N: 16})
}

func BenchmarkDecodeAck(b *testing.B) {
	benchDecode(b, Decode, &Ack{IDs: []string{"r0123456789abcdef0123456789abcdef", "r0123456789abcdef0123456789abcdf0"}})
}

func BenchmarkDecodeCall(b *testing.B) {
	benchDecode(b, DecodeClient, &ClientCall{Ref: "1", Device: "dev-00001", Method: "sys.ping", Params: p64, Timeout: Duration(30 * time.Second)})
}

func BenchmarkDecodePushResult(b *testing.B) {
	created := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	fin := created.Add(3 * time.Millisecond)
	rec := Record{ID: "r0123456789abcdef0123456789abcdef", Device: "dev-00001", Method: "sys.ping", Params: p64,
		State: StateSucceeded, Result: p64, Attempts: 1, Timeout: Duration(30 * time.Second), Created: created, Finished: &fin, RunMs: 1}
	benchDecode(b, DecodePush, NewClientResult("1", rec))
}
