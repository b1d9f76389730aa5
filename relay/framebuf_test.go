package relay

import (
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// A frame that will wait in a client's queue is kept in a buffer of about
// its size, whatever buffers the send pool holds.
func TestEncodeQueuedFits(t *testing.T) {
	for range 8 { // buffers grown large, in the pool frames are sent from
		big := make([]byte, 0, 60<<10)
		putSendBuf(&big)
	}
	for _, n := range []int{10, 3000, 20 << 10} {
		bp, err := encodeQueued(&protocol.ClientError{Ref: "r", Code: "c", Message: strings.Repeat("x", n)})
		if err != nil {
			t.Fatal(err)
		}
		if l, c := len(*bp), cap(*bp); l < n || c > 2*l+maxQueueBuf {
			t.Errorf("message of %d bytes: frame of %d bytes in a buffer of %d", n, l, c)
		}
		putQueueBuf(bp)
	}
}
