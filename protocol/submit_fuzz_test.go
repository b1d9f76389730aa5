package protocol

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// FuzzSubmit feeds REST request bodies (POST /v1/devices/{id}/requests)
// through the same decoding the relay uses: a json.Decoder into Submit,
// including Duration's two accepted forms, then Validate. It checks that
// nothing panics and that an accepted body survives a round trip.
func FuzzSubmit(f *testing.F) {
	for _, s := range []string{
		`{"method":"sys.ping","params":{"x":1},"timeout":"5s"}`,
		`{"method":"gpio.write","params":{"pin":"led","level":"high"},"timeout":1500,"idempotent":true}`,
		`{"method":"i2c.tx","params":{"bus":"1","addr":72,"write":"00","read":2}}`,
		`{"method":"x","timeout":"-1s"}`,
		`{"method":"x","timeout":1e300}`,
		`{"method":"","params":[1,2,3]}`,
		`{"method":"a"} trailing`,
		`[]`, `null`, `{"timeout":"9999999h"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var sub Submit
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(&sub); err != nil {
			return
		}
		if err := sub.Validate(); err != nil {
			if _, ok := err.(*Failure); !ok {
				t.Fatalf("Validate returned %T, want *Failure", err)
			}
			return
		}
		if sub.Timeout < 0 || time.Duration(sub.Timeout) > MaxTimeoutMs*time.Millisecond {
			t.Fatalf("accepted timeout %v out of range", time.Duration(sub.Timeout))
		}
		b, err := json.Marshal(&sub)
		if err != nil {
			t.Fatalf("marshal accepted submit: %v", err)
		}
		var again Submit
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("re-decoded %s invalid: %v", b, err)
		}
		if again.Method != sub.Method || again.Timeout != sub.Timeout || again.Idempotent != sub.Idempotent {
			t.Fatalf("round trip changed %+v into %+v", sub, again)
		}
	})
}
