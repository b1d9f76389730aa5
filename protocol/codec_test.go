package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	msgs := []Message{
		&Hello{Agent: "1.0", Board: "mock", Methods: []string{"gpio.read", "sys.ping"},
			Resources: []Resource{{Name: "GPIO17", Kind: "gpio", Available: true}}, Running: []string{"r1"}},
		&Welcome{Session: "s1", Device: "pi-1", Relay: "1.0", MaxFrame: MaxFrame, PingMs: 20000},
		&Pull{N: 3},
		&Request{ID: "r1", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17","level":"high"}`), TimeoutMs: 5000, Attempt: 1, Idempotent: true},
		&Result{ID: "r1", State: StateSucceeded, Value: json.RawMessage(`{}`), RunMs: 3},
		&Result{ID: "r2", State: StateFailed, Error: &Failure{Code: CodeNotFound, Message: "no pin GPIO99"}},
		&Ack{IDs: []string{"r1", "r2"}, Events: 7},
		&Cancel{ID: "r1"},
		&Event{Seq: 9, Name: "gpio.edge", Data: json.RawMessage(`{"pin":"GPIO27"}`), AgeMs: 12},
		&Error{Code: CodeBadFrame, Message: "nope"},
	}
	for _, m := range msgs {
		t.Run(m.MsgType(), func(t *testing.T) {
			b, err := Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), `{"type":"`+m.MsgType()+`"`) {
				t.Fatalf("frame does not start with its type: %s", b)
			}
			// Appended to a buffer in use, the frame is the same bytes.
			ab, err := AppendEncode([]byte("held"), m)
			if err != nil || string(ab) != "held"+string(b) {
				t.Fatalf("AppendEncode = %q, %v; want %q", ab, err, "held"+string(b))
			}
			got, err := Decode(b, 0)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip changed message:\n got %#v\nwant %#v", got, m)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	big := `{"type":"pull","n":1,"pad":"` + strings.Repeat("x", MaxFrame) + `"}`
	tests := []struct {
		name, frame, code string
	}{
		{"not json", `{"type":`, CodeBadFrame},
		{"array", `[1,2]`, CodeBadFrame},
		{"no type", `{"n":1}`, CodeBadFrame},
		{"unknown type", `{"type":"launch"}`, CodeUnknownType},
		{"too large", big, CodeTooLarge},
		{"pull zero", `{"type":"pull","n":0}`, CodeBadFrame},
		{"pull huge", `{"type":"pull","n":100000}`, CodeBadFrame},
		{"pull wrong type", `{"type":"pull","n":"3"}`, CodeBadFrame},
		{"request no id", `{"type":"request","method":"sys.ping","timeout_ms":10,"attempt":1}`, CodeBadFrame},
		{"request no timeout", `{"type":"request","id":"a","method":"sys.ping","attempt":1}`, CodeBadFrame},
		{"request bad method", `{"type":"request","id":"a","method":"sys ping","timeout_ms":10,"attempt":1}`, CodeBadFrame},
		{"result live state", `{"type":"result","id":"a","state":"queued"}`, CodeBadFrame},
		{"result failed no error", `{"type":"result","id":"a","state":"failed"}`, CodeBadFrame},
		{"result succeeded with error", `{"type":"result","id":"a","state":"succeeded","error":{"code":"x"}}`, CodeBadFrame},
		{"result failed with value", `{"type":"result","id":"a","state":"failed","value":1,"error":{"code":"x"}}`, CodeBadFrame},
		{"ack empty", `{"type":"ack"}`, CodeBadFrame},
		{"event seq 0", `{"type":"event","seq":0,"name":"x"}`, CodeBadFrame},
		{"hello no version", `{"type":"hello","board":"mock"}`, CodeBadFrame},
		{"welcome tiny frame", `{"type":"welcome","session":"s","device":"d","max_frame":10,"ping_ms":1}`, CodeBadFrame},
		{"cancel control char", "{\"type\":\"cancel\",\"id\":\"a\\u0001\"}", CodeBadFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode([]byte(tt.frame), 0)
			if err == nil {
				t.Fatalf("accepted %#v", m)
			}
			var f *Failure
			if !errors.As(err, &f) || f.Code != tt.code {
				t.Fatalf("error %v, want code %s", err, tt.code)
			}
		})
	}
}

// An invalid id in a list is named by its place in the list.
func TestListedIDNamed(t *testing.T) {
	for frame, want := range map[string]string{
		"{\"type\":\"ack\",\"ids\":[\"r1\",\"r\\u0001\"]}":                                             "ack: ids[1]: ",
		`{"type":"hello","agent":"test/1","board":"mock","methods":["sys.ping",""]}`:                   "hello: methods[1]: ",
		`{"type":"hello","agent":"test/1","board":"mock","resources":[{"name":"a"},{"name":"b c"}]}`:   "hello: resources[1].name: ",
		`{"type":"hello","agent":"test/1","board":"mock","running":["r1","r2",""]}`:                    "hello: running[2]: ",
		`{"type":"hello","agent":"test/1","board":"mock","instance":"a b"}`:                            "hello: instance: ",
		`{"type":"hello","agent":"test/1","resources":[{"name":"a","info":{}},{"name":"b","info":7}]}`: "hello: resources[1].info: ",
	} {
		_, err := Decode([]byte(frame), 0)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to name %q", frame, err, want)
		}
	}
}

func TestUnknownFieldsIgnored(t *testing.T) {
	m, err := Decode([]byte(`{"type":"pull","n":2,"future":{"x":1}}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.(*Pull).N != 2 {
		t.Fatalf("got %+v", m)
	}
}

func TestDuration(t *testing.T) {
	for in, want := range map[string]Duration{`"1.5s"`: Duration(1500e6), `250`: Duration(250e6), `0`: 0} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil || d != want {
			t.Errorf("%s: got %v, %v; want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{`"soon"`, `-1`, `true`, `1e20`} {
		var d Duration
		if err := json.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("%s accepted as %v", bad, d)
		}
	}
}

func TestSubmitValidate(t *testing.T) {
	good := Submit{Method: "gpio.read", Params: json.RawMessage(`{"pin":"GPIO2"}`)}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Submit{{}, {Method: "a b"}, {Method: "x", Timeout: -1}, {Method: "x", Params: json.RawMessage(`{`)}, {Method: "x", Params: json.RawMessage("\"\xff\"")}} {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}

// A frame as Encode writes it (type first) decodes as the same frame
// written otherwise, through the general path.
func TestDecodeLeadingType(t *testing.T) {
	m := &Result{ID: "r1", State: StateSucceeded, Value: json.RawMessage(`{"type":"pull"}`)}
	fast, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := leadingType(fast); !ok {
		t.Fatalf("%s: no leading type", fast)
	}
	slow := append([]byte(`{ `), fast[1:]...)
	a, err1 := Decode(fast, 0)
	b, err2 := Decode(slow, 0)
	if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
		t.Fatalf("fast %v %v; general %v %v", a, err1, b, err2)
	}
	for _, bad := range []string{`{"type":"result"`, `{"type":"nope","id":"x"}`, `{"type":"","id":"x"}`, `{"type":"re\"sult"}`} {
		if _, err := Decode([]byte(bad), 0); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}
