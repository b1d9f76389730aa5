package protocol

import (
	"bytes"
	"testing"
)

// FuzzDecode checks that Decode never panics, and that whatever it accepts
// encodes back to a frame it accepts again with the same meaning.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"hello","agent":"1","board":"mock","methods":["sys.ping"]}`,
		`{"type":"pull","n":1}`,
		`{"type":"request","id":"r","method":"sys.ping","timeout_ms":100,"attempt":1,"params":{"a":1}}`,
		`{"type":"result","id":"r","state":"failed","error":{"code":"hw_error","message":"x"}}`,
		`{"type":"ack","ids":["a","b"],"events":3}`,
		`{"type":"event","seq":1,"name":"gpio.edge","data":{"pin":"GPIO27"}}`,
		`{"type":"welcome","session":"s","device":"d","max_frame":65536,"ping_ms":20000}`,
		`{"type":"cancel","id":"r"}`,
		`{"type":"error","code":"bad_frame","message":"m"}`,
		`{"type":1}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Decode(frame, 4096)
		if err != nil {
			return
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("encode of accepted %T: %v", m, err)
		}
		m2, err := Decode(b, len(b)+1)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		b2, _ := Encode(m2)
		if !bytes.Equal(b, b2) {
			t.Fatalf("unstable encoding:\n%s\n%s", b, b2)
		}
	})
}
