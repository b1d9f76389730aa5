package mock

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/hw"
	"github.com/tetherhq/tether/protocol"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newBoard(t *testing.T, opts Options) *hw.Board {
	t.Helper()
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func call(t *testing.T, b *hw.Board, id, method, params string) json.RawMessage {
	t.Helper()
	v, err := b.Execute(context.Background(), &protocol.Request{ID: id, Method: method, Params: json.RawMessage(params)})
	if err != nil {
		t.Fatalf("%s %s: %v", method, params, err)
	}
	return v
}

func TestDescribe(t *testing.T) {
	b := newBoard(t, Options{})
	name, methods, res := b.Describe()
	if name != BoardName || len(methods) != 8 {
		t.Errorf("board %q methods %v", name, methods)
	}
	if len(res) != 26+2 { // GPIO2..27 (gpio or pwm), one bus, one port
		t.Errorf("%d resources", len(res))
	}
	for _, r := range res {
		if !r.Available {
			t.Errorf("%s unavailable: %s", r.Name, r.Error)
		}
	}
}

func TestWireAndEdges(t *testing.T) {
	b := newBoard(t, Options{})
	var mu sync.Mutex
	var events []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- b.Run(ctx, func(name string, data json.RawMessage) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, name+" "+string(data))
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if got := string(call(t, b, "1", "gpio.read", `{"pin":"GPIO27"}`)); got != `{"level":"low"}` {
		t.Fatalf("GPIO27 initially %s", got)
	}
	call(t, b, "2", "gpio.write", `{"pin":"GPIO17","level":"high"}`)
	if got := string(call(t, b, "3", "gpio.read", `{"pin":"GPIO27"}`)); got != `{"level":"high"}` {
		t.Fatalf("GPIO27 after writing 17 high: %s", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no gpio.edge event")
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := `gpio.edge {"pin":"GPIO27","level":"high","edge":"rising"}`; events[0] != want {
		t.Errorf("event %s, want %s", events[0], want)
	}
}

func TestWriteInputRefused(t *testing.T) {
	b := newBoard(t, Options{})
	_, err := b.Execute(context.Background(), &protocol.Request{ID: "1", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO27","level":1}`)})
	var f *protocol.Failure
	if !errors.As(err, &f) || f.Code != protocol.CodeNotPermitted {
		t.Fatalf("got %v", err)
	}
	if got := string(call(t, b, "2", "gpio.write", `{"pin":"GPIO4","level":1}`)); got != `{}` {
		t.Fatal(got)
	}
	if got := string(call(t, b, "3", "gpio.read", `{"pin":"GPIO4"}`)); got != `{"level":"high"}` {
		t.Fatalf("output does not read back: %s", got)
	}
	call(t, b, "4", "pwm.set", `{"pin":"GPIO18","duty":"50%","frequency":"1kHz"}`)
}

func TestTMP102(t *testing.T) {
	b := newBoard(t, Options{})
	var r struct{ Read string }
	json.Unmarshal(call(t, b, "1", "i2c.tx", `{"bus":"1","addr":"0x48","write":"00","read":2}`), &r)
	raw, err := hex.DecodeString(r.Read)
	if err != nil || len(raw) != 2 {
		t.Fatalf("read %q", r.Read)
	}
	c := float64(int16(uint16(raw[0])<<8|uint16(raw[1]))>>4) * 0.0625
	if c < 21 || c > 25 {
		t.Errorf("temperature %.4f °C outside 21..25", c)
	}
	json.Unmarshal(call(t, b, "2", "i2c.tx", `{"bus":"1","addr":72,"write":"01","read":2}`), &r)
	if r.Read != "60a0" {
		t.Errorf("config register %s, want 60a0", r.Read)
	}
}

func TestTMP102Drifts(t *testing.T) {
	now := time.Unix(0, 0)
	s := newTMP102(func() time.Time { return now })
	seen := map[float64]bool{}
	for i := 0; i < 60; i++ {
		now = now.Add(10 * time.Second)
		r := make([]byte, 2)
		if err := s.tx([]byte{0}, r); err != nil {
			t.Fatal(err)
		}
		c := float64(int16(uint16(r[0])<<8|uint16(r[1]))>>4) * 0.0625
		if c < 21 || c > 25 {
			t.Fatalf("%.3f °C out of range", c)
		}
		seen[c] = true
	}
	if len(seen) < 10 {
		t.Errorf("temperature barely changes: %d distinct values", len(seen))
	}
}

func TestEEPROM(t *testing.T) {
	b := newBoard(t, Options{})
	readAt := func(addr string, n int) string {
		var r struct{ Read string }
		json.Unmarshal(call(t, b, "r", "i2c.tx", `{"bus":"1","addr":"0x50","write":"`+addr+`","read":`+itoa(n)+`}`), &r)
		return r.Read
	}
	if got := readAt("0010", 2); got != "ffff" {
		t.Errorf("erased memory reads %s", got)
	}
	call(t, b, "w1", "i2c.tx", `{"bus":"1","addr":"0x50","write":"0010cafebabe"}`)
	if got := readAt("0010", 4); got != "cafebabe" {
		t.Errorf("read back %s", got)
	}
	// Current-address read continues after the last byte read.
	var r struct{ Read string }
	json.Unmarshal(call(t, b, "r2", "i2c.tx", `{"bus":"1","addr":80,"read":1}`), &r)
	if r.Read != "ff" {
		t.Errorf("current-address read %s", r.Read)
	}
	// The address wraps at the end of the 4 KiB.
	call(t, b, "w2", "i2c.tx", `{"bus":"1","addr":"0x50","write":"0ffe01020304"}`)
	if got := readAt("0ffe", 4); got != "01020304" {
		t.Errorf("wrapped read %s", got)
	}
	if got := readAt("0000", 2); got != "0304" {
		t.Errorf("wrap did not reach 0x0000: %s", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSPILoopback(t *testing.T) {
	b := newBoard(t, Options{})
	if got := string(call(t, b, "1", "spi.tx", `{"port":"SPI0.0","write":"deadbeef"}`)); got != `{"read":"deadbeef"}` {
		t.Errorf("got %s", got)
	}
	if got := string(call(t, b, "2", "spi.tx", `{"port":"SPI0.0","write":"01","read":2}`)); got != `{"read":"0100"}` {
		t.Errorf("got %s", got)
	}
}

func TestExecLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "exec.log")
	os.WriteFile(path, []byte("old sys.ping\n"), 0o644) // appended to, not truncated
	b := newBoard(t, Options{ExecLog: path})
	call(t, b, "req-1", "sys.ping", `{}`)
	call(t, b, "req-2", "gpio.write", `{"pin":"GPIO5","level":"high"}`)
	b.Execute(context.Background(), &protocol.Request{ID: "req-3", Method: "no.such"})
	data, err := os.ReadFile(path) // readable before Close: synced per request
	if err != nil {
		t.Fatal(err)
	}
	want := "old sys.ping\nreq-1 sys.ping\nreq-2 gpio.write\nreq-3 no.such\n"
	if string(data) != want {
		t.Errorf("exec log:\n%s\nwant:\n%s", data, want)
	}
}

func TestDelay(t *testing.T) {
	b := newBoard(t, Options{Delay: 50 * time.Millisecond})
	start := time.Now()
	call(t, b, "1", "sys.ping", `{}`)
	if time.Since(start) < 50*time.Millisecond {
		t.Error("Delay not applied")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, err := b.Execute(ctx, &protocol.Request{ID: "2", Method: "sys.ping"})
	var f *protocol.Failure
	if !errors.As(err, &f) || f.Code != protocol.CodeTimeout {
		t.Errorf("got %v, want timeout", err)
	}
}

func TestSysInfo(t *testing.T) {
	b := newBoard(t, Options{Version: "1.2.3"})
	var info struct{ Board, Agent string }
	json.Unmarshal(call(t, b, "1", "sys.info", `{}`), &info)
	if info.Board != BoardName || info.Agent != "1.2.3" {
		t.Errorf("got %+v", info)
	}
}
