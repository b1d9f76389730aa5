package relay

import (
	"bytes"
	"io"
	"sync"

	"github.com/tetherhq/tether/protocol"
)

// frameBufs lends the buffers frames are read into, one frame at a time:
// a decoded message copies whatever it keeps, so the buffer goes back as
// soon as the frame is decoded, and an idle connection holds none.
var frameBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledFrame is the largest buffer kept for reuse; the rare bigger
// frame's buffer is left to the garbage collector.
const maxPooledFrame = 64 << 10

// readFrameBuf reads the rest of a frame from r, up to max+1 bytes (one
// past the limit, to tell "exactly max" from "too large" without reading
// all of an oversized frame), into a lent buffer. The caller gives the
// buffer back with putFrameBuf once done with its bytes.
func readFrameBuf(r io.Reader, max int) (*bytes.Buffer, error) {
	buf := frameBufs.Get().(*bytes.Buffer)
	buf.Reset()
	// Buffer.ReadFrom through an io.LimitedReader, without allocating
	// the LimitedReader.
	for room := max + 1; room > 0; room = max + 1 - buf.Len() {
		buf.Grow(min(bytes.MinRead, room))
		b := buf.AvailableBuffer()
		n, err := r.Read(b[:min(cap(b), room)])
		buf.Write(b[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			putFrameBuf(buf)
			return nil, err
		}
	}
	return buf, nil
}

func putFrameBuf(buf *bytes.Buffer) {
	if buf.Cap() <= maxPooledFrame {
		frameBufs.Put(buf)
	}
}

// sendBufs lends the buffers outgoing frames are encoded into. gorilla
// copies a frame into its write buffer (and batchconn into the batch it
// holds), so a buffer goes back as soon as its frame is written: the
// frames sent for every request then cost no garbage. REST answers and
// stored revisions (encodeRequest) are built in them too.
var sendBufs = sync.Pool{New: func() any { return new([]byte) }}

// encodeLent returns m's frame in a lent buffer, which the caller gives
// back with putSendBuf once the frame is written or dropped.
func encodeLent(m protocol.Message) (*[]byte, error) {
	return encodeFrom(&sendBufs, putSendBuf, m)
}

// encodeFrom encodes m into a buffer from pool, which put gives back if
// the encoding fails.
func encodeFrom(pool *sync.Pool, put func(*[]byte), m protocol.Message) (*[]byte, error) {
	bp := pool.Get().(*[]byte)
	b, err := protocol.AppendEncode((*bp)[:0], m)
	*bp = b
	if err != nil {
		put(bp)
		return nil, err
	}
	return bp, nil
}

func putSendBuf(bp *[]byte) {
	if cap(*bp) <= maxPooledFrame {
		sendBufs.Put(bp)
	}
}

// queueBufs lends the buffers of frames that wait in a /v1/client
// connection's queue. They are kept apart from sendBufs, whose buffers
// the odd large frame (an ack of a big batch, a large result) grows to
// kilobytes: a small frame queued in one of those would hold it all.
var queueBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxQueueBuf is the largest buffer queueBufs keeps; a larger one, grown
// by a large frame, goes to sendBufs.
const maxQueueBuf = 4 << 10

// encodeQueued returns m's frame, to wait in a client's queue, in a lent
// buffer, which the caller gives back with putQueueBuf. The buffer is
// about the frame's size: queueBufs holds none larger than maxQueueBuf,
// and one a larger frame grows is at most about twice its size, so a
// slow client's queue of small frames never holds a large buffer each.
func encodeQueued(m protocol.Message) (*[]byte, error) {
	return encodeFrom(&queueBufs, putQueueBuf, m)
}

func putQueueBuf(bp *[]byte) {
	if cap(*bp) <= maxQueueBuf {
		queueBufs.Put(bp)
		return
	}
	putSendBuf(bp)
}
