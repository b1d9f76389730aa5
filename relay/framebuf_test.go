package relay

import (
	"bytes"
	"testing"
)

// A frame that will wait in a client's queue is kept in a buffer of about
// its size, whatever size of lent buffer it was encoded into.
func TestFitQueued(t *testing.T) {
	big := make([]byte, 100, 64<<10)
	copy(big, bytes.Repeat([]byte("x"), 100))
	bp := fitQueued(&big)
	if cap(*bp) > 2*100+maxQueueBuf || !bytes.Equal(*bp, bytes.Repeat([]byte("x"), 100)) {
		t.Fatalf("queued frame: len %d cap %d", len(*bp), cap(*bp))
	}
	fits := make([]byte, 3000, 4096)
	if fitQueued(&fits) != &fits {
		t.Fatal("a buffer about its frame's size was copied")
	}
}
