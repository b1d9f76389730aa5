package mock

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/tetherhq/tether/hw"
	"github.com/tetherhq/tether/protocol"
)

// FuzzExecute sends the simulated board every method with arbitrary
// params. Whatever they hold, a request ends within its deadline with a
// JSON value or a failure with one of the codes a board reports for bad
// input or a busy peripheral; internal (a handler's panic) is a bug.
func FuzzExecute(f *testing.F) {
	methods := []string{hw.MethodGPIORead, hw.MethodGPIOWrite, hw.MethodGPIOPulse, hw.MethodPWMSet,
		hw.MethodI2CTx, hw.MethodSPITx, hw.MethodSysInfo, hw.MethodSysPing, "gpio.frobnicate"}
	for i, p := range []string{
		`{"pin":"GPIO17"}`, `{"pin":"GPIO17","level":"high"}`, `{"pin":"GPIO17","level":"low","duration":"5ms"}`,
		`{"pin":"GPIO18","duty":0.5,"frequency":1000}`, `{"bus":"1","addr":72,"write":"00","read":2}`,
		`{"port":"SPI0.0","write":"deadbeef"}`, `{}`, `"hello"`, `null`,
	} {
		f.Add(uint8(i), []byte(p))
	}
	f.Add(uint8(1), []byte(`{"pin":"GPIO17","level":"\u0068igh"}`))
	f.Add(uint8(2), []byte(`{"pin":"GPIO17","level":"high","duration":1e308}`))
	f.Add(uint8(4), []byte(`{"bus":"1","addr":80,"write":"0000ff","read":4096}`))
	b, err := New(Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close() })
	allowed := map[string]bool{
		protocol.CodeBadParams: true, protocol.CodeNotFound: true, protocol.CodeNotPermitted: true,
		protocol.CodeHWError: true, protocol.CodeUnknownMethod: true, protocol.CodeTimeout: true,
	}
	f.Fuzz(func(t *testing.T, m uint8, params []byte) {
		req := &protocol.Request{ID: "f1", Method: methods[int(m)%len(methods)], Params: json.RawMessage(params), TimeoutMs: 20}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		v, err := b.Execute(ctx, req)
		if took := time.Since(start); took > time.Second {
			t.Fatalf("%s %s took %v with a 20 ms deadline", req.Method, params, took)
		}
		if err == nil {
			if !json.Valid(v) {
				t.Fatalf("%s %s: value %q is not JSON", req.Method, params, v)
			}
			return
		}
		var fail *protocol.Failure
		switch {
		case errors.Is(err, context.Canceled):
		case !errors.As(err, &fail):
			t.Fatalf("%s %s: error %T %v is not a failure", req.Method, params, err, err)
		case !allowed[fail.Code] || fail.Message == "":
			t.Fatalf("%s %s: failure %q %q", req.Method, params, fail.Code, fail.Message)
		}
	})
}
