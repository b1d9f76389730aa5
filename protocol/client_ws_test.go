package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeClient(t *testing.T) {
	tests := []struct {
		name  string
		frame string
		code  string // "" means accepted
	}{
		{"call", `{"type":"call","ref":"1","device":"pi-1","method":"gpio.write","params":{"pin":"GPIO17","level":"high"},"timeout":"5s"}`, ""},
		{"call ms timeout", `{"type":"call","device":"pi-1","method":"sys.ping","timeout":1500,"idempotent":true}`, ""},
		{"call unknown field", `{"type":"call","device":"pi-1","method":"sys.ping","extra":[1,2]}`, ""},
		{"get", `{"type":"get","id":"r_1"}`, ""},
		{"cancel", `{"type":"cancel","ref":"x","id":"r_1"}`, ""},
		{"subscribe", `{"type":"subscribe","device":"pi-1"}`, ""},
		{"subscribe after", `{"type":"subscribe","device":"pi-1","after":0}`, ""},
		{"unsubscribe", `{"type":"unsubscribe","device":"pi-1"}`, ""},
		{"not json", `hello`, CodeBadFrame},
		{"array", `[1]`, CodeBadFrame},
		{"null", `null`, CodeBadFrame},
		{"no type", `{"device":"pi-1"}`, CodeBadFrame},
		{"numeric type", `{"type":7}`, CodeBadFrame},
		{"unknown type", `{"type":"launch"}`, CodeUnknownType},
		{"relay frame from client", `{"type":"accepted","id":"r"}`, CodeUnknownType},
		{"call without device", `{"type":"call","method":"sys.ping"}`, CodeBadFrame},
		{"call without method", `{"type":"call","device":"pi-1"}`, CodeBadParams},
		{"call method with space", `{"type":"call","device":"pi-1","method":"a b"}`, CodeBadParams},
		{"call negative timeout", `{"type":"call","device":"pi-1","method":"m","timeout":"-1s"}`, CodeBadParams},
		{"call bad timeout", `{"type":"call","device":"pi-1","method":"m","timeout":"soon"}`, CodeBadFrame},
		{"call numeric ref", `{"type":"call","ref":3,"device":"pi-1","method":"m"}`, CodeBadFrame},
		{"call long ref", `{"type":"call","ref":"` + strings.Repeat("r", MaxIDLen+1) + `","device":"d","method":"m"}`, CodeBadFrame},
		{"get without id", `{"type":"get"}`, CodeBadFrame},
		{"cancel bad id", `{"type":"cancel","id":"a\u0000b"}`, CodeBadFrame},
		{"subscribe negative after", `{"type":"subscribe","device":"d","after":-1}`, CodeBadFrame},
		{"too large", `{"type":"call","device":"d","method":"m","params":"` + strings.Repeat("x", 200) + `"}`, CodeTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeClient([]byte(tt.frame), 200)
			if tt.code == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var f *Failure
			if !errors.As(err, &f) {
				t.Fatalf("accepted %T %+v, want %s", m, m, tt.code)
			}
			if f.Code != tt.code {
				t.Fatalf("code %s (%s), want %s", f.Code, f.Message, tt.code)
			}
		})
	}
}

func TestClientCallFields(t *testing.T) {
	m, err := DecodeClient([]byte(`{"type":"call","ref":"a","device":"pi-1","method":"i2c.tx","params":{"bus":"1"},"timeout":250,"idempotent":true}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	c := m.(*ClientCall)
	if c.Ref != "a" || c.Device != "pi-1" || c.Method != "i2c.tx" || !c.Idempotent ||
		time.Duration(c.Timeout) != 250*time.Millisecond || string(c.Params) != `{"bus":"1"}` {
		t.Fatalf("decoded %+v", c)
	}
	if s := c.Submit(); s.Method != "i2c.tx" || !s.Idempotent || s.Timeout != c.Timeout {
		t.Fatalf("submit %+v", s)
	}
}

func TestPushRoundTrip(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rec := Record{ID: "r1", Device: "pi-1", Method: "sys.ping", State: StateSucceeded, Result: []byte(`{"a":1}`), Created: now, Finished: &now}
	failed := rec
	failed.State, failed.Result, failed.Error = StateFailed, nil, &Failure{Code: CodeHWError, Message: "bus"}
	frames := []Message{
		&ClientAccepted{Ref: "1", ID: "r1", Request: Record{ID: "r1", State: StateQueued}},
		NewClientResult("1", rec),
		NewClientResult("", failed),
		&ClientEvent{Device: "pi-1", Seq: 4, Name: "gpio.edge", Data: []byte(`{"pin":"GPIO27"}`), Time: now},
		&ClientPresence{Device: "pi-1", Online: true, LastSeen: &now},
		&ClientError{Ref: "2", Code: CodeNotFound, Message: "unknown request"},
	}
	for _, m := range frames {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodePush(b, 0)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		b2, _ := Encode(back)
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the frame:\n%s\n%s", b, b2)
		}
	}
	// A result must be terminal and carry an error unless it succeeded.
	for _, bad := range []string{
		`{"type":"result","id":"r","state":"queued","request":{"id":"r"}}`,
		`{"type":"result","id":"r","state":"failed","request":{"id":"r"}}`,
		`{"type":"result","id":"r","state":"succeeded","request":{"id":"other"}}`,
		`{"type":"call","device":"d","method":"m"}`,
	} {
		if _, err := DecodePush([]byte(bad), 0); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// FuzzClientFrame checks that DecodeClient never panics, and that whatever
// it accepts encodes back to a frame it accepts again with the same
// meaning. (Named so that -fuzz=FuzzDecode still selects one target.)
func FuzzClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"call","ref":"1","device":"pi-1","method":"gpio.write","params":{"pin":"GPIO17","level":"high"},"timeout":"5s"}`,
		`{"type":"call","device":"pi-1","method":"sys.ping","timeout":1500,"idempotent":true}`,
		`{"type":"get","ref":"g","id":"r_1"}`,
		`{"type":"cancel","id":"r_1"}`,
		`{"type":"subscribe","device":"pi-1","after":12}`,
		`{"type":"unsubscribe","device":"pi-1"}`,
		`{"type":"call","device":"pi-1","method":"m","timeout":-5}`,
		`{"type":"accepted"}`, `{"type":[]}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := DecodeClient(frame, 4096)
		if err != nil {
			var fl *Failure
			if !errors.As(err, &fl) || fl.Code == "" {
				t.Fatalf("error is not a coded *Failure: %v", err)
			}
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("encode of accepted %T: %v", m, err)
		}
		m2, err := DecodeClient(b, len(b)+1)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		b2, _ := Encode(m2)
		if !bytes.Equal(b, b2) {
			t.Fatalf("unstable encoding:\n%s\n%s", b, b2)
		}
	})
}
