package agent

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/tetherhq/tether/protocol"
)

// pingExec echoes params at once, as the board's sys.ping does.
type pingExec struct{ instantExec }

func (pingExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return append(json.RawMessage(nil), r.Params...), nil
}

// benchParams are 64 bytes, as tether-bench's.
var benchParams = json.RawMessage(`{"pad":"012345678901234567890123456789012345678901234567890123"}`)

// BenchmarkInstantRequest is the agent's own work for one request of an
// instant method, without the connection: the request, its result and
// credit handed to the writer, and the ack.
func BenchmarkInstantRequest(b *testing.B) {
	a, s := attachedAgent(b, "", pingExec{})
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = "r" + strconv.Itoa(i)
	}
	ack := &protocol.Ack{IDs: make([]string, 1)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := ids[i%len(ids)]
		a.onRequest(s, &protocol.Request{ID: id, Method: "sys.ping", Params: benchParams, TimeoutMs: 60000, Attempt: 1})
		<-s.out
		<-s.out
		ack.IDs[0] = id
		a.onAck(ack)
	}
}

// BenchmarkSessionRequest is a request's round trip through a session
// with a relay in the same process: the relay's request frame, the
// agent's result and credit, and the relay's ack, sent with the next
// request as the relay does. The relay's side is in the figure too; with
// -cpu 1 the figure is close to the CPU a request costs both.
func BenchmarkSessionRequest(b *testing.B) {
	url, outcome := scriptedRelay(b, protocol.MaxFrame, func(c *websocket.Conn) string {
		req := func(i int) []byte {
			f, _ := protocol.Encode(&protocol.Request{ID: "r" + strconv.Itoa(i), Method: "sys.ping", Params: benchParams, TimeoutMs: 60000, Attempt: 1})
			return f
		}
		b.ResetTimer()
		c.WriteMessage(websocket.TextMessage, req(0))
		for i := 0; i < b.N; i++ {
			for n := 0; n < 2; n++ { // result and pull
				if _, _, err := c.ReadMessage(); err != nil {
					return err.Error()
				}
			}
			f, _ := protocol.Encode(&protocol.Ack{IDs: []string{"r" + strconv.Itoa(i)}})
			c.WriteMessage(websocket.TextMessage, f)
			if i+1 < b.N {
				c.WriteMessage(websocket.TextMessage, req(i+1))
			}
		}
		b.StopTimer()
		return "done"
	})
	if got := runWith(b, url, outcome, pingExec{}); got != "done" {
		b.Fatal(got)
	}
}
