package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// fakeRelay answers the REST API with handlers a test sets, and records
// what the CLI asked for.
type fakeRelay struct {
	srv    *httptest.Server
	submit http.HandlerFunc
	get    func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int)

	mu      sync.Mutex // guards the fields below
	queries []string   // raw query of each submit
	waits   []time.Duration
}

func startFakeRelay(t *testing.T, f *fakeRelay) *fakeRelay {
	t.Helper()
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && strings.HasPrefix(r.URL.Path, "/v1/devices/"):
			f.mu.Lock()
			f.queries = append(f.queries, r.URL.RawQuery)
			f.mu.Unlock()
			f.submit(w, r)
		case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/v1/requests/"):
			var wait time.Duration
			if v := r.URL.Query().Get("wait"); v != "" {
				var err error
				if wait, err = time.ParseDuration(v); err != nil {
					t.Errorf("GET %s: %v", r.URL, err)
				}
			}
			f.mu.Lock()
			f.waits = append(f.waits, wait)
			n := len(f.waits)
			f.mu.Unlock()
			f.get(w, r, wait, n)
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func answer(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // as the relay writes records
	enc.Encode(v)
}

func record(id, state string, result string) protocol.Record {
	rec := protocol.Record{ID: id, Device: "pi-1", Method: "sys.ping", State: state}
	if result != "" {
		rec.Result = json.RawMessage(result)
	}
	return rec
}

// runCLICtx is runCLI with a context the test can cancel.
func runCLICtx(ctx context.Context, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(ctx, args, &out, &errOut, func(string) string { return "" })
	return code, out.String(), errOut.String()
}

// pause waits d, or until the client goes away, as a relay's long-poll.
func pause(r *http.Request, d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	}
}

// A call learns its request's id from a submit answered at once, then
// long-polls for the result, and prints it as it always did.
func TestCallSubmitsThenWaits(t *testing.T) {
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			if n < 3 {
				pause(r, min(wait, 20*time.Millisecond)) // a relay capping its waits
				answer(w, http.StatusOK, record("r1", protocol.StateDelivered, ""))
				return
			}
			answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"x":1}`))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping", "x:=1")
	if code != 0 || out != "{\n  \"x\": 1\n}\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queries) != 1 || f.queries[0] != "" {
		t.Errorf("submit queries %q, want one without a wait", f.queries)
	}
	if len(f.waits) != 3 || f.waits[0] != maxWait {
		t.Errorf("long-polls waited %v, want 3 of %v", f.waits, maxWait)
	}
}

// Once the relay has told the request's id, an interrupted or failed
// call names it, so that the user can follow or cancel the request.
func TestCallNamesRequestWhenStoppedEarly(t *testing.T) {
	for _, tc := range []struct {
		name      string
		interrupt bool
		want      string
	}{
		{"interrupted", true, "tether: interrupted; request r1 may still run"},
		{"relay error", false, "tether: relay: 500 internal: internal error; request r1 may still run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			polling := make(chan struct{})
			var once sync.Once
			f := startFakeRelay(t, &fakeRelay{
				submit: func(w http.ResponseWriter, r *http.Request) {
					answer(w, http.StatusAccepted, record("r1", protocol.StateQueued, ""))
				},
				get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
					if !tc.interrupt {
						answer(w, http.StatusInternalServerError, protocol.APIError{Error: protocol.Failure{Code: "internal", Message: "internal error"}})
						return
					}
					once.Do(func() { close(polling) })
					<-r.Context().Done()
				},
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.interrupt {
				go func() {
					<-polling
					cancel()
				}()
			}
			code, _, errOut := runCLICtx(ctx, "--relay", f.srv.URL, "call", "pi-1", "sys.ping")
			if code != 2 || !strings.Contains(errOut, tc.want) ||
				!strings.Contains(errOut, "`tether get r1`") || !strings.Contains(errOut, "`tether cancel r1`") {
				t.Fatalf("exit %d, stderr %q; want 2 and %q with get and cancel", code, errOut, tc.want)
			}
		})
	}
}

// A submit answered 500 with its request (the relay's storage failed
// while the request may still run) names the request to follow.
func TestCallUnstoredNamesRequest(t *testing.T) {
	f := startFakeRelay(t, &fakeRelay{
		submit: func(w http.ResponseWriter, r *http.Request) {
			answer(w, http.StatusInternalServerError, map[string]any{
				"error":   protocol.Failure{Code: protocol.CodeInternal, Message: "relay storage failed after the request reached the device"},
				"request": record("r9", protocol.StateDelivered, ""),
			})
		},
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			t.Errorf("GET %s after a failed submit", r.URL)
		},
	})
	for _, args := range [][]string{{"call", "pi-1", "gpio.write", "pin=GPIO17", "level=high"}, {"call", "--async", "pi-1", "sys.ping"}} {
		code, out, errOut := runCLI(append([]string{"--relay", f.srv.URL}, args...)...)
		if code != 2 || out != "" || !strings.Contains(errOut, "request r9 for device pi-1 may still run") ||
			!strings.Contains(errOut, "`tether get r9`") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	// A 500 without a request is reported as before.
	f.submit = func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusInternalServerError, protocol.APIError{Error: protocol.Failure{Code: protocol.CodeInternal, Message: "internal error"}})
	}
	code, _, errOut := runCLI("--relay", f.srv.URL, "call", "pi-1", "sys.ping")
	if code != 2 || errOut != "tether: relay: 500 internal: internal error\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// get --wait longer than the relay's cap on a long-poll keeps polling
// until the request ends or the time has passed.
func TestGetWaitOutlastsRelayCap(t *testing.T) {
	const relayCap = 20 * time.Millisecond
	f := startFakeRelay(t, &fakeRelay{
		get: func(w http.ResponseWriter, r *http.Request, wait time.Duration, n int) {
			pause(r, min(wait, relayCap))
			if strings.HasSuffix(r.URL.Path, "/r1") && n == 5 {
				answer(w, http.StatusOK, record("r1", protocol.StateSucceeded, `{"x":1}`))
				return
			}
			answer(w, http.StatusOK, record(strings.TrimPrefix(r.URL.Path, "/v1/requests/"), protocol.StateDelivered, ""))
		},
	})
	code, out, errOut := runCLI("--relay", f.srv.URL, "get", "r1", "--wait", "5m")
	if code != 0 || out != "{\n  \"x\": 1\n}\n" {
		t.Fatalf("get --wait 5m: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	f.mu.Lock()
	if len(f.waits) != 5 || f.waits[0] != maxWait {
		t.Errorf("long-polls waited %v, want 5, the first of %v", f.waits, maxWait)
	}
	f.waits = nil
	f.mu.Unlock()

	// A request still running when the time has passed is printed as such.
	const wait = 150 * time.Millisecond
	start := time.Now()
	code, out, errOut = runCLI("--relay", f.srv.URL, "get", "r2", "--wait", wait.String())
	if code != 0 || out != "r2 delivered\n" {
		t.Fatalf("get --wait %v: exit %d, stdout %q, stderr %q", wait, code, out, errOut)
	}
	if took := time.Since(start); took < wait {
		t.Errorf("get --wait %v returned after %v", wait, took)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.waits) < 2 || f.waits[0] > wait {
		t.Errorf("long-polls waited %v", f.waits)
	}
}
