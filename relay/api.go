package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Error codes of the REST API beyond those of package protocol.
const (
	codeUnauthorized     = "unauthorized"
	codeBadRequest       = "bad_request"
	codeMethodNotAllowed = "method_not_allowed"
	codeUnavailable      = "unavailable"
	// codeKeyReused refuses a submission whose idempotency key the client
	// gave a different request (422).
	codeKeyReused = "key_reused"
)

// defaultEventLimit is how many events one events call returns unless
// ?limit= says otherwise.
const defaultEventLimit = 100

// Handler returns the relay's HTTP handler: the agent WebSocket, the
// client REST API and WebSocket, and the dashboard.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	routes := []struct {
		method, path string
		h            http.HandlerFunc
	}{
		{"GET", "/healthz", s.handleHealth},
		{"GET", "/v1/agent", s.countUpgrades(endpointAgent, s.handleAgent)},
		{"GET", "/v1/devices", s.client(s.handleDevices)},
		{"GET", "/v1/devices/{id}", s.client(s.handleDevice)},
		{"POST", "/v1/devices/{id}/requests", s.client(s.handleSubmit)},
		{"GET", "/v1/devices/{id}/requests", s.client(s.handlePending)},
		{"GET", "/v1/devices/{id}/events", s.client(s.handleEvents)},
		{"GET", "/v1/requests/{id}", s.client(s.handleGet)},
		{"DELETE", "/v1/requests/{id}", s.client(s.handleCancel)},
		{"POST", "/v1/tickets", s.client(s.handleTicket)},
		{"GET", "/v1/client", s.countUpgrades(endpointClient, s.handleClient)},
		{"GET", "/metrics", s.handleMetrics},
		{"GET", "/{$}", s.handleDashboard},
		{"GET", "/app.js", s.handleDashboard},
		{"GET", "/style.css", s.handleDashboard},
	}
	allow := make(map[string][]string)
	var paths []string
	for _, r := range routes {
		mux.HandleFunc(r.method+" "+r.path, r.h)
		if allow[r.path] == nil {
			paths = append(paths, r.path)
		}
		allow[r.path] = append(allow[r.path], r.method)
	}
	// The bare path patterns catch every other method, so 405s are JSON
	// like everything else.
	for _, p := range paths {
		methods := strings.Join(allow[p], ", ")
		mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", methods)
			writeError(w, http.StatusMethodNotAllowed, codeMethodNotAllowed, r.Method+" not allowed; use "+methods)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, protocol.CodeNotFound, "no such endpoint")
	})
	return s.accessLog(s.bodyDeadline(mux))
}

// bodyDeadline gives the body of every request that has one ReadTimeout to
// arrive. A handler that refuses a request without reading its body leaves
// net/http to drain it, which without a deadline waits for ever on a
// client that stalled. handleSubmit lifts the deadline once it has read
// the body, so that a long-poll's wait is not cut short by it.
func (s *Server) bodyDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			setReadDeadline(w, time.Now().Add(s.cfg.ReadTimeout))
		}
		h.ServeHTTP(w, r)
	})
}

// setReadDeadline is http.ResponseController's SetReadDeadline, without
// allocating the controller.
func setReadDeadline(w http.ResponseWriter, t time.Time) error {
	for {
		switch v := w.(type) {
		case interface{ SetReadDeadline(time.Time) error }:
			return v.SetReadDeadline(t)
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// client wraps h with client-key authentication.
func (s *Server) client(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, creds, ok := s.creds.clientView(bearer(r.Header.Get("Authorization")))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
			writeError(w, http.StatusUnauthorized, codeUnauthorized, "missing or invalid client key")
			return
		}
		if st, ok := r.Context().(*reqState); ok {
			st.note.client = id.name
			st.client, st.creds, st.authed = id, creds, true
			h(w, r)
			return
		}
		noteOf(r).client = id.name
		h(w, r.WithContext(withClientID(r.Context(), id)))
	}
}

// handleHealth answers that the relay serves, and what a client may
// count on beyond the first version of the API: idempotency_keys says
// that a submission repeated with its key is not run twice, which a
// client must know before it repeats one whose answer was lost.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true, "idempotency_keys": true})
}

func (s *Server) handleDevices(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"devices": s.scopedDevices(r.Context())})
}

func (s *Server) handleDevice(w http.ResponseWriter, r *http.Request) {
	if err := s.Authorize(r.Context(), r.PathValue("id"), ""); err != nil {
		s.writeErr(w, err)
		return
	}
	info, err := s.Device(r.PathValue("id"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) handlePending(w http.ResponseWriter, r *http.Request) {
	recs, err := s.Pending(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Requests []protocol.Record `json:"requests"`
	}{recs})
}

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	wait, err := s.parseWait(r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	// The body is read under bodyDeadline's deadline, lifted once it is
	// read whole (and kept if not, so that the connection ends). A body
	// whose length is given ends there, and can only be over the limit if
	// that length is; any other goes through MaxBytesReader.
	body := r.Body
	if r.ContentLength < 0 || r.ContentLength > int64(s.cfg.MaxFrame) {
		body = http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxFrame))
	}
	buf, err := readFrameBuf(body, s.cfg.MaxFrame)
	if err == nil {
		setReadDeadline(w, time.Time{})
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, protocol.CodeTooLarge,
				fmt.Sprintf("body exceeds %d bytes", s.cfg.MaxFrame))
			return
		}
		writeError(w, http.StatusBadRequest, codeBadRequest, "reading body: "+err.Error())
		return
	}
	sub, err := decodeSubmit(buf.Bytes())
	putFrameBuf(buf) // the decoded submit copied what it keeps
	if err != nil {
		writeError(w, http.StatusBadRequest, codeBadRequest, err.Error())
		return
	}
	// A client that sent the header counts on it: one without a key, or
	// with several, is refused, not taken as no key.
	if keys := r.Header.Values("Idempotency-Key"); len(keys) > 0 {
		if len(keys) > 1 {
			writeError(w, http.StatusBadRequest, codeBadRequest, "more than one Idempotency-Key header")
			return
		}
		key := keys[0]
		// The header's draft standard quotes the key (a structured
		// field string); bare keys are common too.
		if len(key) >= 2 && key[0] == '"' && key[len(key)-1] == '"' {
			key = key[1 : len(key)-1]
		}
		if key == "" {
			writeError(w, http.StatusBadRequest, protocol.CodeBadParams, "Idempotency-Key: want 1.."+strconv.Itoa(protocol.MaxIDLen)+" printable characters, got none")
			return
		}
		if sub.Key != "" && sub.Key != key {
			writeError(w, http.StatusBadRequest, codeBadRequest, "the Idempotency-Key header and the body's key differ")
			return
		}
		sub.Key = key
	}
	rec, err := s.Submit(r.Context(), r.PathValue("id"), sub)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.answerRecord(w, r, rec, wait, http.StatusAccepted)
}

// decodeSubmit decodes a submission's body: on the fast path if it can,
// through encoding/json otherwise.
func decodeSubmit(body []byte) (protocol.Submit, error) {
	if sub, ok := protocol.DecodeSubmitFast(body); ok {
		return sub, nil
	}
	// A variable of its own: encoding/json's would move the fast path's
	// to the heap as well.
	var sub protocol.Submit
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&sub); err != nil {
		return sub, fmt.Errorf("malformed JSON body: %w", err)
	}
	// Only JSON whitespace may follow the object. (Decoder.More would
	// wave through a body that goes on with ']' or '}'.)
	if len(bytes.Trim(body[dec.InputOffset():], " \t\r\n")) > 0 {
		return sub, errors.New("malformed JSON body: trailing data")
	}
	return sub, nil
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	wait, err := s.parseWait(r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	rec, err := s.Request(r.PathValue("id"))
	if err == nil {
		err = s.Authorize(r.Context(), rec.Device, rec.Method)
	}
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.answerRecord(w, r, rec, wait, http.StatusOK)
}

// answerRecord writes rec, first waiting up to wait for it to end. A
// finished record is 200; an unfinished one gets status live.
func (s *Server) answerRecord(w http.ResponseWriter, r *http.Request, rec protocol.Record, wait time.Duration, live int) {
	if wait > 0 && !protocol.Terminal(rec.State) {
		var err error
		if rec, err = s.hub.wait(r.Context(), rec.ID, s.shutdown, wait); err != nil {
			s.writeErr(w, err)
			return
		}
		if r.Context().Err() != nil {
			return // the client went away
		}
	}
	status := live
	if protocol.Terminal(rec.State) {
		status = http.StatusOK
	}
	writeRecord(w, status, &rec)
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizeRequest(r.Context(), r.PathValue("id")); err != nil {
		s.writeErr(w, err)
		return
	}
	rec, err := s.Cancel(r.PathValue("id"))
	switch {
	case errors.Is(err, ErrTerminal):
		writeJSON(w, http.StatusConflict, struct {
			Error   protocol.Failure `json:"error"`
			Request protocol.Record  `json:"request"`
		}{
			Error:   protocol.Failure{Code: protocol.CodeBadState, Message: "request already " + rec.State},
			Request: rec,
		})
	case err != nil:
		s.writeErr(w, err)
	case protocol.Terminal(rec.State):
		writeRecord(w, http.StatusOK, &rec)
	default:
		writeRecord(w, http.StatusAccepted, &rec)
	}
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.Authorize(r.Context(), id, ""); err != nil {
		s.writeErr(w, err)
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, protocol.CodeBadParams, "after: want a sequence number")
			return
		}
		after = n
	}
	limit := defaultEventLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, protocol.CodeBadParams, "limit: want a positive number")
			return
		}
		limit = n
	}
	wait, err := s.parseWait(r)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		// Take the channel before reading, so an event stored in between
		// still wakes us.
		changed, err := s.DeviceChanged(id)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		evs, err := s.Events(id, after, limit)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		if len(evs) > 0 || wait <= 0 {
			writeJSON(w, http.StatusOK, map[string]any{"events": evs})
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			wait = 0
		case <-s.shutdown:
			wait = 0
		case <-r.Context().Done():
			return
		}
	}
}

// parseWait reads ?wait= as a Go duration ("5s") or milliseconds, capped
// at MaxWait.
func (s *Server) parseWait(r *http.Request) (time.Duration, error) {
	v := queryValue(r.URL, "wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		ms, merr := strconv.ParseInt(v, 10, 64)
		if merr != nil {
			return 0, protocol.Errorf(protocol.CodeBadParams, "wait: want a duration like 10s")
		}
		if ms < 0 {
			return 0, protocol.Errorf(protocol.CodeBadParams, "wait must not be negative")
		}
		d = time.Duration(min(ms, int64(s.cfg.MaxWait/time.Millisecond))) * time.Millisecond
	}
	if d < 0 {
		return 0, protocol.Errorf(protocol.CodeBadParams, "wait must not be negative")
	}
	return min(d, s.cfg.MaxWait), nil
}

// queryValue is u.Query().Get(key) without the map of every parameter
// that Query builds, when the query holds nothing for it to unescape or
// refuse (a '%', '+' or ';') and is well within its limit on the number of
// parameters: then a parameter is the text between '&'s, and its key the
// text before its first '='.
func queryValue(u *url.URL, key string) string {
	q := u.RawQuery
	if strings.ContainsAny(q, "%+;") || strings.Count(q, "&") >= maxPlainParams {
		return u.Query().Get(key)
	}
	for q != "" {
		var p string
		p, q, _ = strings.Cut(q, "&")
		if k, v, _ := strings.Cut(p, "="); k == key {
			return v
		}
	}
	return ""
}

// maxPlainParams bounds the queries queryValue reads itself, far below
// url.ParseQuery's limit (10,000 by default, GODEBUG urlmaxqueryparams).
const maxPlainParams = 100

// writeErr maps an error to its status and code.
func (s *Server) writeErr(w http.ResponseWriter, err error) {
	if writeGuardErr(w, err) {
		return
	}
	var (
		f  *protocol.Failure
		ue *UnstoredError
	)
	switch {
	case errors.As(err, &ue):
		s.log.Error("request failed", "err", err)
		writeJSON(w, http.StatusInternalServerError, struct {
			Error   protocol.Failure `json:"error"`
			Request protocol.Record  `json:"request"`
		}{protocol.Failure{Code: protocol.CodeInternal, Message: unstoredMessage}, ue.Request})
	case errors.As(err, &f):
		status := http.StatusBadRequest
		switch f.Code {
		case protocol.CodeTooLarge:
			status = http.StatusRequestEntityTooLarge
		case codeKeyReused:
			status = http.StatusUnprocessableEntity
		}
		writeError(w, status, f.Code, f.Message)
	case errors.Is(err, ErrUnknownDevice):
		writeError(w, http.StatusNotFound, protocol.CodeNotFound, "unknown device")
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, protocol.CodeNotFound, "unknown request")
	case errors.Is(err, ErrQueueFull):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, protocol.CodeQueueFull, "device queue is full")
	case errors.Is(err, ErrClosed):
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "relay is shutting down")
	default:
		s.log.Error("request failed", "err", err)
		writeError(w, http.StatusInternalServerError, protocol.CodeInternal, "internal error")
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, protocol.APIError{Error: protocol.Failure{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encoding failed"}}`)
	}
	writeBody(w, status, append(b, '\n'))
}

// writeRecord is writeJSON for a request, the answer of most calls,
// without reflection (protocol.Record.AppendJSON).
func writeRecord(w http.ResponseWriter, status int, rec *protocol.Record) {
	bp := sendBufs.Get().(*[]byte)
	*bp = append(rec.AppendJSON((*bp)[:0]), '\n')
	writeBody(w, status, *bp) // the ResponseWriter copies it
	putSendBuf(bp)
}

// The values of the headers every answer has. net/http copies a handler's
// headers when it writes them and changes no value in place, so every
// answer can share these instead of allocating its own (Header.Set).
var (
	jsonType = []string{"application/json"}
	noStore  = []string{"no-store"}
)

// chunkedOver is the size of net/http's buffer in front of a response
// body (bufferBeforeChunkingSize): a handler that writes more than that
// is sent chunked unless it set Content-Length.
const chunkedOver = 2048

func writeBody(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h["Content-Type"] = jsonType
	h["Cache-Control"] = noStore
	if len(b) > chunkedOver {
		// A smaller body net/http holds back whole, and gives the
		// length of itself.
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
	}
	w.WriteHeader(status)
	w.Write(b)
}
