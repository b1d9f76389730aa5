package protocol

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"
)

// AppendJSON writes what json.Marshal writes, but for the spacing inside
// Params and Result, which it copies as they are.
func TestRecordAppendJSON(t *testing.T) {
	fin := time.Date(2026, 11, 25, 21, 30, 0, 123456789, time.UTC)
	for _, r := range []Record{
		{},
		{ID: "r1", Device: "pi", Method: "sys.ping", State: StateQueued, Timeout: Duration(30 * time.Second), Created: time.Unix(1, 0).UTC()},
		{
			ID: "r2", Device: "pi-é", Method: "gpio.write", Params: json.RawMessage(`{"pin":"GPIO17","level":"high"}`),
			State: StateFailed, Result: json.RawMessage(`[1,2,{"a":null}]`), Error: &Failure{Code: "bad_pin", Message: "no pin \"X\" <here> & \u2028 \x01 there"},
			Attempts: 3, Idempotent: true, Timeout: Duration(1500 * time.Millisecond), Created: fin.Add(-time.Hour).In(time.FixedZone("x", 3600)),
			Finished: &fin, RunMs: 42,
		},
		{ID: "r3", Params: json.RawMessage(`null`), Result: json.RawMessage(`"ok"`), Created: time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		want, err := json.Marshal(&r)
		if err != nil && r.Created.Year() < 10000 {
			t.Fatal(err)
		}
		got := r.AppendJSON(nil)
		if err == nil && !bytes.Equal(got, want) {
			t.Errorf("AppendJSON:\n got %s\nwant %s", got, want)
		}
		if err != nil {
			continue // json.Marshal refuses years past 9999; AppendJSON writes null
		}
		var back Record
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		if !reflect.DeepEqual(back.Error, r.Error) || back.ID != r.ID || !back.Created.Equal(r.Created) {
			t.Errorf("round trip of %s: %+v", got, back)
		}
	}

	// Spacing inside a raw field is kept; the value is the same.
	r := Record{ID: "r4", Params: json.RawMessage(`{ "a" : [1, 2] }`)}
	var a, b map[string]any
	want, _ := json.Marshal(&r)
	json.Unmarshal(want, &a)
	if err := json.Unmarshal(r.AppendJSON(nil), &b); err != nil || !reflect.DeepEqual(a, b) {
		t.Errorf("raw params: %v, %v vs %v", err, b, a)
	}
}

// The frames written without reflection are the ones reflection writes.
func TestAppendFrame(t *testing.T) {
	fin := time.Date(2026, 11, 25, 21, 30, 0, 0, time.UTC)
	rec := Record{ID: "r1", Device: "pi", Method: "m", Params: json.RawMessage(`{"a":1}`), State: StateFailed,
		Error: &Failure{Code: "c", Message: "m & <n>"}, Attempts: 1, Timeout: Duration(time.Second), Created: fin, Finished: &fin}
	for _, m := range []Message{
		&Request{ID: "r1", Method: "sys.ping", Params: json.RawMessage(`{"p":"x"}`), TimeoutMs: 30000, Attempt: 2, Idempotent: true},
		&Request{ID: "r2", Method: "gpio.read", TimeoutMs: 1, Attempt: 1},
		&ClientAccepted{Ref: "c1", ID: "r1", Request: rec},
		&ClientAccepted{ID: "r1", Request: Record{ID: "r1"}},
		NewClientResult("c1", rec),
		NewClientResult("", Record{ID: "r2", State: StateSucceeded, Result: json.RawMessage(`[true]`)}),
		&Result{ID: "r1", State: StateSucceeded, Value: json.RawMessage(`{"pong":1}`), RunMs: 3},
		&Result{ID: "r1", State: StateFailed, Error: &Failure{Code: "x", Message: "y\n"}},
		&Pull{N: 64},
		&Ack{IDs: []string{"r1", "r\"2"}, Events: 9},
		&Ack{Events: 1},
		&Ack{IDs: []string{"r1"}},
		&ClientCall{Ref: "1", Device: "pi", Method: "sys.ping", Params: json.RawMessage(`{}`), Timeout: Duration(1500 * time.Millisecond), Idempotent: true},
		&ClientCall{Device: "pi", Method: "m"},
	} {
		want, err := encodeReflect(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Encode(m)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%T:\n got %s\nwant %s", m, got, want)
		}
	}
}

func BenchmarkRecordJSON(b *testing.B) {
	fin := time.Now()
	r := Record{ID: "r0123456789abcdef0123456789abcdef", Device: "dev-00001", Method: "sys.ping",
		Params: json.RawMessage(`{"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`), State: StateSucceeded,
		Result: json.RawMessage(`{"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`), Attempts: 1,
		Timeout: Duration(30 * time.Second), Created: time.Now(), Finished: &fin, RunMs: 1}
	b.Run("Marshal", func(b *testing.B) {
		for b.Loop() {
			json.Marshal(&r)
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf = r.AppendJSON(buf[:0])
		}
	})
}

// AppendJSONDuration writes what json.Marshal writes of a Duration, whose
// text has no character JSON escapes, in every unit and at the extremes.
func TestAppendJSONDuration(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 999, 1500, time.Millisecond + 1, 30 * time.Second, -90 * time.Minute,
		7 * 24 * time.Hour, math.MaxInt64, math.MinInt64} {
		want, err := json.Marshal(Duration(d))
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendJSONDuration([]byte("x"), d); string(got) != "x"+string(want) {
			t.Errorf("%d: %s, want %s", d, got[1:], want)
		}
	}
}
