package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fastTypes make an empty value of every type with a fast decoder.
var fastTypes = []func() fastDecoder{
	func() fastDecoder { return new(Submit) },
	func() fastDecoder { return new(Request) },
	func() fastDecoder { return new(Result) },
	func() fastDecoder { return new(Pull) },
	func() fastDecoder { return new(Ack) },
	func() fastDecoder { return new(ClientCall) },
	func() fastDecoder { return new(ClientAccepted) },
	func() fastDecoder { return new(ClientResult) },
}

// encodedFrames are messages as their senders build them, with the decoder
// their receiver uses.
func encodedFrames() []struct {
	decode func([]byte, int) (Message, error)
	msg    Message
} {
	created := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	fin := created.Add(3 * time.Millisecond)
	rec := Record{ID: "r0123456789abcdef0123456789abcdef", Device: "dev-00001", Method: "sys.ping", Params: p64,
		State: StateSucceeded, Result: p64, Attempts: 1, Timeout: Duration(30 * time.Second), Created: created, Finished: &fin, RunMs: 1}
	failed := rec
	failed.Params, failed.Result, failed.Attempts, failed.Idempotent = nil, nil, 2, true
	failed.State, failed.Error = StateFailed, &Failure{Code: CodeHWError, Message: "bus 1: no ack from 0x48 (é)"}
	failed.Created = created.In(time.FixedZone("", -5*3600))
	return []struct {
		decode func([]byte, int) (Message, error)
		msg    Message
	}{
		{Decode, &Request{ID: "r1", Method: "sys.ping", TimeoutMs: 30000, Attempt: 1}},
		{Decode, &Request{ID: "r2", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17","level":"high"}`), TimeoutMs: MaxTimeoutMs, Attempt: 3, Idempotent: true}},
		{Decode, &Request{ID: "r3", Method: "i2c.tx", Params: json.RawMessage(`[1, "}", {"a" : "\"{"}]`), TimeoutMs: 1, Attempt: 1}},
		{Decode, &Result{ID: "r1", State: StateSucceeded, Value: p64, RunMs: 1}},
		{Decode, &Result{ID: "r2", State: StateFailed, Error: &Failure{Code: CodeHWError, Message: "bus 1: no ack"}, RunMs: 12}},
		{Decode, &Result{ID: "r3", State: StateCanceled, Error: &Failure{Code: CodeCanceled}}},
		{Decode, &Result{ID: "r4", State: StateSucceeded, Value: json.RawMessage(`"pong"`)}},
		{Decode, &Pull{N: 1}},
		{Decode, &Pull{N: MaxPull}},
		{Decode, &Ack{IDs: []string{"r1", "r2"}}},
		{Decode, &Ack{Events: 7}},
		{Decode, &Ack{IDs: []string{"r1"}, Events: 1 << 40}},
		{DecodeClient, &ClientCall{Device: "pi-1", Method: "sys.ping"}},
		{DecodeClient, &ClientCall{Ref: "1", Device: "pi-1", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17"}`), Timeout: Duration(1500 * time.Millisecond), Idempotent: true}},
		{DecodePush, &ClientAccepted{Ref: "1", ID: "r1", Request: Record{ID: "r1", Device: "pi-1", Method: "sys.ping", State: StateQueued, Timeout: Duration(30 * time.Second), Created: created}}},
		{DecodePush, &ClientAccepted{ID: "r1", Request: Record{ID: "r1"}}},
		{DecodePush, NewClientResult("1", rec)},
		{DecodePush, NewClientResult("", failed)},
	}
}

// trickyFrames are what a sender other than Encode may write: each is
// either read the same by the fast path or left to encoding/json.
var trickyFrames = []string{
	// Whitespace and member order.
	" {\t\"type\" : \"pull\" ,\r\n \"n\" : 2 } \n",
	`{"n":2,"type":"pull"}`,
	`{"id":"r","run_ms":3,"state":"succeeded","value":{ "a" : [ 1 , 2 ] },"type":"result"}`,
	`{"type":"result","id":"r","state":"failed","error":{ "message" : "m" , "code" : "c" }}`,
	`{"type":"ack","ids":[ "a" , "b" ]}`,
	`{"type":"ack","ids":[],"events":1}`,
	`{"type":"call","idempotent":false,"timeout":"1h2m3.5s","method":"m","device":"d"}`,
	// Escapes, control bytes and unicode in strings and keys.
	`{"type":"result","id":"r\u0031","state":"succeeded"}`,
	`{"type":"pull","\u006e":1}`,
	`{"type":"request","id":"a\"b","method":"m","timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"a\/b","method":"m","timeout_ms":1,"attempt":1}`,
	"{\"type\":\"request\",\"id\":\"a\tb\",\"method\":\"m\",\"timeout_ms\":1,\"attempt\":1}",
	`{"type":"result","id":"r","state":"failed","error":{"code":"c","message":"é ☃ 𝄞 ` + "\u2028" + `"}}`,
	"{\"type\":\"result\",\"id\":\"r\xff\",\"state\":\"succeeded\"}",
	"{\"type\":\"result\",\"id\":\"r\xed\xa0\x80\",\"state\":\"succeeded\"}",
	"{\"type\":\"ack\",\"ids\":[\"\xc3\"]}",
	"{\"type\":\"result\",\"id\":\"r\",\"state\":\"succeeded\",\"value\":\"\xff\"}",
	// Repeated and case-varied keys.
	`{"type":"pull","n":1,"n":2}`,
	`{"type":"pull","type":"pull","n":1}`,
	`{"type":"result","id":"r","state":"failed","error":{"code":"a"},"error":{"message":"b"}}`,
	`{"type":"result","id":"r","state":"failed","error":{"code":"a","code":"b"}}`,
	`{"type":"pull","N":1}`,
	`{"Type":"pull","n":1}`,
	`{"type":"result","ID":"r","state":"succeeded"}`,
	`{"type":"pull","n":1,"extra":true}`,
	`{"type":"pull","":1}`,
	// Nested values with brackets and quotes in strings.
	`{"type":"request","id":"r","method":"m","params":{"a":"}{\"]","b":[1,{"c":"\\"}],"d":"\\\""},"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":"{","timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":[[[]]],"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":{"a":1}}},"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":{"a":1]],"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":-0.5e+3,"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":tru,"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":1 2,"timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":"\"","timeout_ms":1,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","params":"\`,
	`{"type":"result","id":"r","state":"succeeded","value":` + strings.Repeat("[", maxRawDepth) + strings.Repeat("]", maxRawDepth) + `}`,
	`{"type":"result","id":"r","state":"succeeded","value":` + strings.Repeat("[", maxRawDepth+1) + strings.Repeat("]", maxRawDepth+1) + `}`,
	// null.
	`{"type":"request","id":"r","method":"m","params":null,"timeout_ms":1,"attempt":1}`,
	`{"type":"result","id":"r","state":"failed","error":null}`,
	`{"type":"result","id":"r","state":"succeeded","value":null}`,
	`{"type":"ack","ids":null,"events":1}`,
	`{"type":"ack","ids":["a",null]}`,
	`{"type":"pull","n":null}`,
	`{"type":null,"n":1}`,
	`{"type":"call","device":"d","method":"m","timeout":null}`,
	// Numbers.
	`{"type":"request","id":"r","method":"m","timeout_ms":9223372036854775807,"attempt":2147483647}`,
	`{"type":"request","id":"r","method":"m","timeout_ms":-9223372036854775808,"attempt":-2147483648}`,
	`{"type":"request","id":"r","method":"m","timeout_ms":9223372036854775808,"attempt":1}`,
	`{"type":"request","id":"r","method":"m","timeout_ms":1,"attempt":2147483648}`,
	`{"type":"request","id":"r","method":"m","timeout_ms":1,"attempt":9223372036854775807}`,
	`{"type":"ack","events":18446744073709551615}`,
	`{"type":"ack","events":18446744073709551616}`,
	`{"type":"ack","events":-0}`,
	`{"type":"pull","n":-0}`,
	`{"type":"pull","n":01}`,
	`{"type":"pull","n":1.0}`,
	`{"type":"pull","n":1e3}`,
	`{"type":"pull","n":-}`,
	`{"type":"pull","n":+1}`,
	`{"type":"pull","n":"1"}`,
	// Booleans and durations.
	`{"type":"call","device":"d","method":"m","idempotent":true}`,
	`{"type":"call","device":"d","method":"m","idempotent":"true"}`,
	`{"type":"call","device":"d","method":"m","idempotent":truex}`,
	`{"type":"call","device":"d","method":"m","timeout":1500}`,
	`{"type":"call","device":"d","method":"m","timeout":"soon"}`,
	`{"type":"call","device":"d","method":"m","timeout":"-1s"}`,
	`{"type":"call","device":"d","method":"m","timeout":"5\u0073"}`,
	`{"type":"call","device":"d","method":"m","timeout":"1.5e3ms"}`,
	// Times in a record.
	`{"type":"accepted","id":"r","request":{"id":"r","created":"2026-01-02T03:04:05+01:00","finished":"2026-01-02T03:04:05.5Z"}}`,
	`{"type":"accepted","id":"r","request":{"id":"r","created":"2026-13-02T03:04:05Z"}}`,
	`{"type":"accepted","id":"r","request":{"id":"r","created":"2026-01-02t03:04:05z"}}`,
	`{"type":"accepted","id":"r","request":{"id":"r","finished":null}}`,
	`{"type":"result","id":"r","state":"succeeded","result":1,"request":{"id":"r","attempts":2,"run_ms":5,"timeout":"1s","idempotent":true}}`,
	// Type, structure and trailing data.
	`{"type":"pull","n":1}x`,
	`{"type":"pull","n":1}{}`,
	`{"type":"pull","n":1`,
	`{"type":"pull","n":1,}`,
	`{"type":"pull",,"n":1}`,
	`{"type":"pull" "n":1}`,
	`{"type":"pull","n":1]`,
	`{"n":1}`,
	`{"type":"push","n":1}`,
	`{"type":"","n":1}`,
	`{}`, `[]`, `null`, ``, `{`, `"type"`,
	// REST submissions.
	`{"method":"sys.ping","params":{"p":"x"},"timeout":"30s"}`,
	`{"method":"gpio.write","params":{"pin":"GPIO17","level":"high"},"idempotent":true}`,
	` { "timeout" : "1m" , "method" : "m" } `,
	`{"method":"m"}}`,
	`{"method":"m","timeout":1500}`,
	`{"method":"m","Method":"n"}`,
	`{"method":"m","key":"order-42"}`,
	`{"method":"m","key":"a\"b\u0041"}`,
	`{"method":"m","key":null}`,
	`{"method":"m","KEY":"k"}`,
	`{"type":"call","ref":"r","device":"d","method":"m","key":"k-1"}`,
}

// FuzzFastDecode holds the fast decoders to encoding/json: a frame one of
// them takes must decode with json.Unmarshal into the very same message.
func FuzzFastDecode(f *testing.F) {
	for _, e := range encodedFrames() {
		b, err := Encode(e.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range trickyFrames {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		for _, newMsg := range fastTypes {
			m := newMsg()
			if !m.decodeFast(frame) {
				continue
			}
			want := newMsg()
			if err := json.Unmarshal(frame, want); err != nil {
				t.Fatalf("%T: fast path took %q, encoding/json refuses it: %v", m, frame, err)
			}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("%T of %q:\nfast path     %#v\nencoding/json %#v", m, frame, m, want)
			}
		}
	})
}
