package relay

import (
	"net/http"
	"slices"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

type pendingList struct {
	Requests []protocol.Record `json:"requests"`
}

func pendingIDs(recs []protocol.Record) []string {
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID+":"+r.State)
	}
	return ids
}

// GET /v1/devices/{id}/requests lists what the device has yet to finish,
// in the order it gets it: the request its agent runs, then the queue;
// ended requests are not in it, nor, for a client with a method scope,
// requests of methods it may not call.
func TestPendingRequests(t *testing.T) {
	e := newEnv(t)
	code, body := e.do("GET", "/v1/devices/dev1/requests", nil)
	if got := decode[pendingList](t, body); code != http.StatusOK || got.Requests == nil || len(got.Requests) != 0 {
		t.Fatalf("empty device: %d %s, want an empty list", code, body)
	}
	a, running := deliveredRequest(e)
	q1 := e.submit(protocol.Submit{Method: "sys.ping"})
	q2 := e.submit(protocol.Submit{Method: "gpio.write"})
	q3 := e.submit(protocol.Submit{Method: "sys.ping"})
	if code, body := e.do("DELETE", "/v1/requests/"+q3.ID, nil); code != http.StatusOK {
		t.Fatalf("cancel: %d %s", code, body)
	}
	code, body = e.do("GET", "/v1/devices/dev1/requests", nil)
	want := []string{running.ID + ":delivered", q1.ID + ":queued", q2.ID + ":queued"}
	if got := pendingIDs(decode[pendingList](t, body).Requests); code != http.StatusOK || !slices.Equal(got, want) {
		t.Errorf("pending: %d %v, want %v", code, got, want)
	}

	sc, err := ParseScope("dev1", "sys.*")
	if err != nil {
		t.Fatal(err)
	}
	kiosk, err := AddClientScoped(e.cfg.DataDir, "kiosk", sc)
	if err != nil {
		t.Fatal(err)
	}
	code, body = e.doAs(kiosk, nil, "GET", "/v1/devices/dev1/requests", nil)
	if got := pendingIDs(decode[pendingList](t, body).Requests); code != http.StatusOK || !slices.Equal(got, []string{q1.ID + ":queued"}) {
		t.Errorf("pending for a sys.* client: %d %v, want only %s", code, got, q1.ID)
	}

	a.succeed(running.ID, `1`)
	code, body = e.do("GET", "/v1/devices/dev1/requests", nil)
	want = []string{q1.ID + ":queued", q2.ID + ":queued"}
	if got := pendingIDs(decode[pendingList](t, body).Requests); code != http.StatusOK || !slices.Equal(got, want) {
		t.Errorf("pending after a result: %d %v, want %v", code, got, want)
	}

	if code, body := e.do("GET", "/v1/devices/nope/requests", nil); code != http.StatusNotFound || apiCode(t, body) != protocol.CodeNotFound {
		t.Errorf("unknown device: %d %s, want 404 not_found", code, body)
	}
	other, err := ParseScope("other*", "")
	if err != nil {
		t.Fatal(err)
	}
	narrow, err := AddClientScoped(e.cfg.DataDir, "narrow", other)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := e.doAs(narrow, nil, "GET", "/v1/devices/dev1/requests", nil); code != http.StatusForbidden {
		t.Errorf("device outside the scope: %d %s, want 403", code, body)
	}
	if code, body := e.doAs("", nil, "GET", "/v1/devices/dev1/requests", nil); code != http.StatusUnauthorized {
		t.Errorf("no key: %d %s, want 401", code, body)
	}
}
