package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// fastDecodes counts the messages decodeFrom reads on the fast path while
// the test runs.
func fastDecodes(t *testing.T) *int {
	n := new(int)
	testHookFastDecode = func(Message) { *n++ }
	t.Cleanup(func() { testHookFastDecode = nil })
	return n
}

// unmarshalFresh decodes frame with encoding/json into a new message of
// m's type.
func unmarshalFresh(t *testing.T, m Message, frame []byte) Message {
	t.Helper()
	want := reflect.New(reflect.TypeOf(m).Elem()).Interface().(Message)
	if err := json.Unmarshal(frame, want); err != nil {
		t.Fatalf("encoding/json refuses %s: %v", frame, err)
	}
	return want
}

// The frames Encode writes take the fast path in the decoder their
// receiver uses, so that its speed cannot go unnoticed.
func TestFastDecodeTakesEncodedFrames(t *testing.T) {
	fast := fastDecodes(t)
	for _, e := range encodedFrames() {
		b, err := Encode(e.msg)
		if err != nil {
			t.Fatal(err)
		}
		*fast = 0
		got, err := e.decode(b, 0)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if *fast != 1 {
			t.Errorf("%s: not decoded on the fast path", b)
		}
		if want := unmarshalFresh(t, e.msg, b); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\nfast path     %#v\nencoding/json %#v", b, got, want)
		}
		if again, _ := Encode(got); string(again) != string(b) {
			t.Errorf("round trip changed the frame:\n%s\n%s", b, again)
		}
	}
}

var (
	newRequest  = func() Message { return new(Request) }
	newResult   = func() Message { return new(Result) }
	newPull     = func() Message { return new(Pull) }
	newAck      = func() Message { return new(Ack) }
	newCall     = func() Message { return new(ClientCall) }
	newAccepted = func() Message { return new(ClientAccepted) }
	newPushRes  = func() Message { return new(ClientResult) }
)

// What other senders may vary in a frame is still read on the fast path,
// as encoding/json reads it.
func TestFastDecodeTakesVariants(t *testing.T) {
	tests := []struct {
		name   string
		newMsg func() Message
		frame  string
	}{
		{"whitespace", newPull, " {\t\"type\" : \"pull\" ,\r\n \"n\" : 2 } \n"},
		{"type last", newResult, `{"id":"r","run_ms":3,"state":"succeeded","value":{ "a" : [ 1 , 2 ] },"type":"result"}`},
		{"error members swapped", newResult, `{"type":"result","id":"r","state":"failed","error":{ "message" : "m" , "code" : "c" }}`},
		{"empty error", newResult, `{"type":"result","id":"r","state":"failed","error":{}}`},
		{"unicode", newResult, `{"type":"result","id":"r","state":"failed","error":{"code":"c","message":"é ☃ 𝄞 ` + "\u2028\x7f" + `"}}`},
		{"empty ids", newAck, `{"type":"ack","ids":[],"events":1}`},
		{"ids with spaces", newAck, `{"type":"ack","ids":[ "a" , "b" ]}`},
		{"params with brackets and quotes in strings", newRequest, `{"type":"request","id":"r","method":"m","params":{"a":"}{\"]","b":[1,{"c":"\\"}],"d":"\\\""},"timeout_ms":1,"attempt":1}`},
		{"params a string", newRequest, `{"type":"request","id":"r","method":"m","params":"{\u0041","timeout_ms":1,"attempt":1}`},
		{"params a number", newRequest, `{"type":"request","id":"r","method":"m","params":-0.5e+3 ,"timeout_ms":1,"attempt":1}`},
		{"params as deep as allowed", newResult, `{"type":"result","id":"r","state":"succeeded","value":` + strings.Repeat("[", maxRawDepth) + strings.Repeat("]", maxRawDepth) + `}`},
		{"range limits", newRequest, `{"type":"request","id":"r","method":"m","timeout_ms":-9223372036854775808,"attempt":2147483647}`},
		{"uint64 limit", newAck, `{"type":"ack","events":18446744073709551615}`},
		{"minus zero", newPull, `{"type":"pull","n":-0}`},
		{"duration", newCall, `{"type":"call","idempotent":false,"timeout":"1h2m3.5s","method":"m","device":"d"}`},
		{"record times with offset", newAccepted, `{"type":"accepted","id":"r","request":{"id":"r","created":"2026-01-02T03:04:05+01:00","finished":"2026-01-02T03:04:05.5Z"}}`},
		{"record fields", newPushRes, `{"type":"result","id":"r","state":"succeeded","result":1,"request":{"id":"r","attempts":2,"run_ms":5,"timeout":"1s","idempotent":true}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.newMsg()
			if !m.(fastDecoder).decodeFast([]byte(tt.frame)) {
				t.Fatalf("fast path refused %s", tt.frame)
			}
			if want := unmarshalFresh(t, m, []byte(tt.frame)); !reflect.DeepEqual(m, want) {
				t.Fatalf("fast path     %#v\nencoding/json %#v", m, want)
			}
		})
	}
}

// What the fast path cannot be sure of is left to encoding/json.
func TestFastDecodeFallsBack(t *testing.T) {
	deep := strings.Repeat("[", maxRawDepth+1) + strings.Repeat("]", maxRawDepth+1)
	tooDeep := strings.Repeat("[", 10000) + strings.Repeat("]", 10000) // past encoding/json's limit in a frame
	tests := []struct {
		name   string
		newMsg func() Message
		frame  string
	}{
		{"unknown key", newPull, `{"type":"pull","n":1,"extra":true}`},
		{"empty key", newPull, `{"type":"pull","":1}`},
		{"key in other case", newPull, `{"type":"pull","N":1}`},
		{"type key in other case", newPull, `{"Type":"pull","n":1}`},
		{"record key in other case", newAccepted, `{"type":"accepted","id":"r","request":{"ID":"r"}}`},
		{"escaped key", newPull, `{"type":"pull","\u006e":1}`},
		{"repeated key", newPull, `{"type":"pull","n":1,"n":2}`},
		{"repeated type", newPull, `{"type":"pull","type":"pull","n":1}`},
		{"repeated error", newResult, `{"type":"result","id":"r","state":"failed","error":{"code":"a"},"error":{"message":"b"}}`},
		{"repeated key in error", newResult, `{"type":"result","id":"r","state":"failed","error":{"code":"a","code":"b"}}`},
		{"repeated key in record", newAccepted, `{"type":"accepted","id":"r","request":{"id":"r","id":"r"}}`},
		{"escape in string", newResult, `{"type":"result","id":"r\u0031","state":"succeeded"}`},
		{"escaped quote in string", newRequest, `{"type":"request","id":"a\"b","method":"m","timeout_ms":1,"attempt":1}`},
		{"escaped type", newPull, `{"type":"pul\u006c","n":1}`},
		{"control byte in string", newRequest, "{\"type\":\"request\",\"id\":\"a\tb\",\"method\":\"m\",\"timeout_ms\":1,\"attempt\":1}"},
		{"invalid UTF-8", newResult, "{\"type\":\"result\",\"id\":\"r\xff\",\"state\":\"succeeded\"}"},
		{"UTF-8 surrogate", newResult, "{\"type\":\"result\",\"id\":\"r\xed\xa0\x80\",\"state\":\"succeeded\"}"},
		{"invalid UTF-8 in ids", newAck, "{\"type\":\"ack\",\"ids\":[\"\xc3\"]}"},
		{"null params", newRequest, `{"type":"request","id":"r","method":"m","params":null,"timeout_ms":1,"attempt":1}`},
		{"null value", newResult, `{"type":"result","id":"r","state":"succeeded","value":null}`},
		{"null error", newResult, `{"type":"result","id":"r","state":"failed","error":null}`},
		{"null ids", newAck, `{"type":"ack","ids":null,"events":1}`},
		{"null in ids", newAck, `{"type":"ack","ids":["a",null]}`},
		{"null number", newPull, `{"type":"pull","n":null}`},
		{"null type", newPull, `{"type":null,"n":1}`},
		{"null timeout", newCall, `{"type":"call","device":"d","method":"m","timeout":null}`},
		{"null finished", newAccepted, `{"type":"accepted","id":"r","request":{"id":"r","finished":null}}`},
		{"null request", newAccepted, `{"type":"accepted","id":"r","request":null}`},
		{"fraction", newPull, `{"type":"pull","n":1.0}`},
		{"exponent", newPull, `{"type":"pull","n":1e3}`},
		{"leading zero", newPull, `{"type":"pull","n":01}`},
		{"plus sign", newPull, `{"type":"pull","n":+1}`},
		{"lone minus", newPull, `{"type":"pull","n":-}`},
		{"number in a string", newPull, `{"type":"pull","n":"1"}`},
		{"int64 overflow", newRequest, `{"type":"request","id":"r","method":"m","timeout_ms":9223372036854775808,"attempt":1}`},
		{"int overflow", newRequest, `{"type":"request","id":"r","method":"m","timeout_ms":1,"attempt":9223372036854775808}`},
		{"uint64 overflow", newAck, `{"type":"ack","events":18446744073709551616}`},
		{"negative uint", newAck, `{"type":"ack","events":-1}`},
		{"minus zero uint", newAck, `{"type":"ack","events":-0}`},
		{"bool in a string", newCall, `{"type":"call","device":"d","method":"m","idempotent":"true"}`},
		{"bool misspelt", newCall, `{"type":"call","device":"d","method":"m","idempotent":truex}`},
		{"timeout in milliseconds", newCall, `{"type":"call","device":"d","method":"m","timeout":1500}`},
		{"timeout not a duration", newCall, `{"type":"call","device":"d","method":"m","timeout":"soon"}`},
		{"escaped timeout", newCall, `{"type":"call","device":"d","method":"m","timeout":"5\u0073"}`},
		{"bad time", newAccepted, `{"type":"accepted","id":"r","request":{"id":"r","created":"2026-13-02T03:04:05Z"}}`},
		{"time in lower case", newAccepted, `{"type":"accepted","id":"r","request":{"id":"r","created":"2026-01-02t03:04:05z"}}`},
		{"invalid params", newRequest, `{"type":"request","id":"r","method":"m","params":{"a":1]],"timeout_ms":1,"attempt":1}`},
		{"params closed twice", newRequest, `{"type":"request","id":"r","method":"m","params":{"a":1}},"timeout_ms":1,"attempt":1}`},
		{"params two values", newRequest, `{"type":"request","id":"r","method":"m","params":1 2,"timeout_ms":1,"attempt":1}`},
		{"params missing", newRequest, `{"type":"request","id":"r","method":"m","params":,"timeout_ms":1,"attempt":1}`},
		{"params unterminated string", newRequest, `{"type":"request","id":"r","method":"m","params":"\`},
		{"value nested deeper than the fast path reads", newResult, `{"type":"result","id":"r","state":"succeeded","value":` + deep + `}`},
		{"value nested past encoding/json's limit", newResult, `{"type":"result","id":"r","state":"succeeded","value":` + tooDeep + `}`},
		{"trailing data", newPull, `{"type":"pull","n":1}x`},
		{"second object", newPull, `{"type":"pull","n":1}{}`},
		{"missing brace", newPull, `{"type":"pull","n":1`},
		{"trailing comma", newPull, `{"type":"pull","n":1,}`},
		{"double comma", newPull, `{"type":"pull",,"n":1}`},
		{"missing comma", newPull, `{"type":"pull" "n":1}`},
		{"missing colon", newPull, `{"type":"pull","n" 1}`},
		{"wrong bracket", newPull, `{"type":"pull","n":1]`},
		{"no type", newPull, `{"n":1}`},
		{"other type", newPull, `{"type":"push","n":1}`},
		{"type of another frame", newResult, `{"type":"pull","n":1}`},
		{"type not a string", newPull, `{"type":1,"n":1}`},
		{"array", newPull, `[]`},
		{"empty", newPull, ``},
	}
	fast := fastDecodes(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.newMsg()
			if m.(fastDecoder).decodeFast([]byte(tt.frame)) {
				t.Fatalf("fast path took %.200q", tt.frame)
			}
			// decodeFrom gives it to encoding/json, which decides.
			*fast = 0
			decodeFrom([]byte(tt.frame), 1<<20, func(string) Message { return tt.newMsg() })
			if *fast != 0 {
				t.Fatal("decodeFrom took the fast path")
			}
		})
	}
}

// A decoded message keeps nothing of the frame it came from, on either
// path: the relay reads frames into buffers it reuses for the next one.
func TestDecodeCopiesTheFrame(t *testing.T) {
	type frame struct {
		decode func([]byte, int) (Message, error)
		b      []byte
		fast   bool // the path it must take
	}
	fast := fastDecodes(t)
	var frames []frame
	for _, e := range encodedFrames() {
		b, err := Encode(e.msg)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, frame{e.decode, b, true})
		// The same frame with a member the fast path refuses (a key it
		// does not know) takes encoding/json's path.
		slow := []byte(strings.Replace(string(b), `"type":`, `"TYPE":"x","type":`, 1))
		frames = append(frames, frame{e.decode, slow, false})
	}
	for _, f := range frames {
		want, err := f.decode(append([]byte(nil), f.b...), 0)
		if err != nil {
			t.Fatalf("%s: %v", f.b, err)
		}
		*fast = 0
		got, err := f.decode(f.b, 0)
		if err != nil {
			t.Fatal(err)
		}
		if (*fast == 1) != f.fast {
			t.Fatalf("%s: fast path taken %d times, want it taken: %v", f.b, *fast, f.fast)
		}
		for i := range f.b {
			f.b[i] = 'x'
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("the message changed with its frame's bytes:\n%#v\n%#v", got, want)
		}
	}
}
