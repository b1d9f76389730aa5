package agent

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tetherhq/tether/protocol"
)

type countingExec struct{ calls atomic.Int32 }

func (c *countingExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	c.calls.Add(1)
	return json.RawMessage(`{}`), nil
}

// A request whose context ended before it started is answered without
// touching the hardware: a redelivery past its deadline is expired, not
// run late.
func TestExecuteDoesNotStartWhatIsOver(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func() (context.Context, func())
		byRelay bool // canceled by the relay
		state   string
		code    string
		calls   int32
	}{
		{"deadline passed", func() (context.Context, func()) {
			return context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
		}, false, protocol.StateExpired, protocol.CodeExpired, 0},
		{"canceled", func() (context.Context, func()) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, func() {}
		}, true, protocol.StateCanceled, protocol.CodeCanceled, 0},
		{"shutting down", func() (context.Context, func()) {
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(errShutdown)
			return ctx, func() {}
		}, false, protocol.StateFailed, protocol.CodeInterrupted, 0},
		{"live", func() (context.Context, func()) {
			return context.WithTimeout(context.Background(), time.Minute)
		}, false, protocol.StateSucceeded, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exec := &countingExec{}
			a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, exec)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tt.ctx()
			defer cancel()
			j := &job{req: &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 1, Attempt: 2}}
			j.canceled.Store(tt.byRelay)
			res := a.execute(ctx, j)
			code := ""
			if res.Error != nil {
				code = res.Error.Code
			}
			if res.State != tt.state || code != tt.code || exec.calls.Load() != tt.calls {
				t.Fatalf("state %s code %q after %d executions, want %s %q after %d", res.State, code, exec.calls.Load(), tt.state, tt.code, tt.calls)
			}
		})
	}
}

// A result whose frame would exceed the relay's frame limit (its last
// welcome's max_frame) is reported as failed with too_large: the relay
// would refuse the frame at every resend. The largest value that fits is
// sent as it is, characters JSON escapes included.
func TestResultTooLargeFails(t *testing.T) {
	for _, tt := range []struct {
		name  string
		n     int // value bytes beyond the limit
		state string
	}{{"fits", 0, protocol.StateSucceeded}, {"one byte over", 1, protocol.StateFailed}} {
		t.Run(tt.name, func(t *testing.T) {
			const limit = 2048
			// The frame of a value of n bytes takes base+n.
			base := resultFrameLen(&protocol.Result{ID: "r1", State: protocol.StateSucceeded, Value: json.RawMessage(`""`)}) - 2
			a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, bigExec{limit - base + tt.n})
			if err != nil {
				t.Fatal(err)
			}
			a.relayFrame.Store(limit)
			j := &job{req: &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 60000, Attempt: 1}}
			res := a.execute(context.Background(), j)
			if res.State != tt.state {
				t.Fatalf("state %s, want %s (%v)", res.State, tt.state, res.Error)
			}
			if tt.state == protocol.StateFailed && (res.Error.Code != protocol.CodeTooLarge || res.Value != nil) {
				t.Fatalf("result %+v", res)
			}
			if b, _ := protocol.Encode(res); tt.state == protocol.StateSucceeded && len(b) != limit {
				t.Fatalf("frame of %d bytes, want %d", len(b), limit)
			}
		})
	}
}

type bigExec struct{ n int }

func (b bigExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	return json.RawMessage(`"` + strings.Repeat("<", b.n-2) + `"`), nil
}

// A failed result too long for a small frame limit keeps its state and
// code, and loses the end of its message.
func TestFailedResultShortenedToFit(t *testing.T) {
	const limit = 1024
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, failExec{strings.Repeat("<", 1000)})
	if err != nil {
		t.Fatal(err)
	}
	a.relayFrame.Store(limit)
	res := a.execute(context.Background(), &job{req: &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 60000, Attempt: 1}})
	b, _ := protocol.Encode(res)
	if res.State != protocol.StateFailed || res.Error.Code != protocol.CodeHWError || len(b) > limit || !strings.HasPrefix(res.Error.Message, "<<<") {
		t.Fatalf("frame of %d bytes: %.60s…", len(b), b)
	}
}

type failExec struct{ msg string }

func (f failExec) Execute(ctx context.Context, r *protocol.Request) (json.RawMessage, error) {
	return nil, protocol.Errorf(protocol.CodeHWError, "%s", f.msg)
}

// A handler's long error message is cut to maxMessage bytes on a
// character boundary; the code stays.
func TestLongErrorMessageClipped(t *testing.T) {
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, failExec{strings.Repeat("ü", 3000)})
	if err != nil {
		t.Fatal(err)
	}
	res := a.execute(context.Background(), &job{req: &protocol.Request{ID: "r1", Method: "m", TimeoutMs: 60000, Attempt: 1}})
	m := res.Error.Message
	if res.State != protocol.StateFailed || res.Error.Code != protocol.CodeHWError || len(m) > maxMessage || !utf8.ValidString(m) || !strings.HasSuffix(m, "…") {
		t.Fatalf("result %s %s, message of %d bytes: %.20q…", res.State, res.Error.Code, len(m), m)
	}
}

// An event whose frame could not fit in the relay's frame limit, JSON's
// escapes included, or whose data is not JSON, is refused by Emit, not
// queued to be refused by the relay at every resend.
func TestEmitRefusesWhatTheRelayWould(t *testing.T) {
	a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t"}, &countingExec{})
	if err != nil {
		t.Fatal(err)
	}
	a.relayFrame.Store(4096)
	for _, data := range []string{
		`"` + strings.Repeat("x", 4096) + `"`,
		`"` + strings.Repeat("<", 700) + `"`, // 700 bytes, 4,200 in the frame
		`{"level":`,
	} {
		if err := a.Emit("e", json.RawMessage(data)); err == nil {
			t.Errorf("Emit took %.20s… (%d bytes)", data, len(data))
		}
	}
	if err := a.Emit("small", json.RawMessage(`"`+strings.Repeat("<", 500)+`"`)); err != nil {
		t.Fatal(err)
	}
	if n := len(a.out.events); n != 1 {
		t.Fatalf("%d events queued, want 1", n)
	}
}

// The cheap bound fitResult tries first is never below the frame's real
// length, escapes included.
func TestResultFrameBound(t *testing.T) {
	for _, res := range []*protocol.Result{
		{ID: "r1", State: protocol.StateSucceeded, Value: json.RawMessage(`{}`), RunMs: math.MaxInt64},
		{ID: strings.Repeat("<", protocol.MaxIDLen), State: protocol.StateFailed, RunMs: -1,
			Error: &protocol.Failure{Code: strings.Repeat("&", protocol.MaxIDLen), Message: strings.Repeat("\x01\"", 512)}},
		{ID: "", State: "", Error: &protocol.Failure{}},
	} {
		b, _ := protocol.Encode(res)
		if bound := resultFrameBound(res); bound < len(b) {
			t.Errorf("bound %d under the frame's %d bytes: %s", bound, len(b), b)
		}
	}
}
