package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestRotateFrames(t *testing.T) {
	tests := []struct {
		frame string
		code  string // "" means accepted
	}{
		{`{"type":"rotate","token":"tdv_abc","grace_ms":60000}`, ""},
		{`{"type":"rotate","token":"tdv_abc"}`, ""},
		{`{"type":"rotated"}`, ""},
		{`{"type":"rotated","extra":1}`, ""},
		{`{"type":"rotate","grace_ms":1}`, CodeBadFrame},
		{`{"type":"rotate","token":"has space"}`, CodeBadFrame},
		{`{"type":"rotate","token":"t\u00e9"}`, CodeBadFrame},
		{`{"type":"rotate","token":"` + strings.Repeat("a", MaxTokenLen+1) + `"}`, CodeBadFrame},
		{`{"type":"rotate","token":"t","grace_ms":-1}`, CodeBadFrame},
		{`{"type":"rotate","token":"t","grace_ms":2592000001}`, CodeBadFrame},
		{`{"type":"rotate","token":7}`, CodeBadFrame},
	}
	for _, tc := range tests {
		m, err := Decode([]byte(tc.frame), 0)
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.frame, err)
				continue
			}
			b, _ := Encode(m)
			if _, err := Decode(b, 0); err != nil {
				t.Errorf("%s: re-decode of %s: %v", tc.frame, b, err)
			}
			continue
		}
		var f *Failure
		if !errors.As(err, &f) || f.Code != tc.code {
			t.Errorf("%s: got %v, want code %s", tc.frame, err, tc.code)
		}
	}
	b, _ := Encode(&Rotated{})
	if string(b) != `{"type":"rotated"}` {
		t.Errorf("rotated encodes as %s", b)
	}
}
