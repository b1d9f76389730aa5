package relay

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// accessLog logs one line per HTTP request. Secrets stay out of it: the
// Authorization header is never logged, and the values of secret query
// parameters (?ticket=) are redacted. The client or device a request
// authenticated as is logged by name. A WebSocket connection is logged
// when its handler returns: an agent's right after the upgrade, a
// client's when the connection ends.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		st := &reqState{Context: r.Context()}
		st.rec.ResponseWriter = w
		rec, note := &st.rec, &st.note
		next.ServeHTTP(rec, r.WithContext(st))
		if !s.log.Enabled(r.Context(), slog.LevelInfo) {
			return
		}
		status := rec.status
		switch {
		case rec.hijacked:
			status = http.StatusSwitchingProtocols
		case status == 0:
			status = http.StatusOK
		}
		attrs := []any{
			"method", r.Method,
			"uri", redactedURI(r.URL),
			"status", status,
			"bytes", rec.bytes,
			"ms", time.Since(start).Milliseconds(),
			"remote", r.RemoteAddr,
		}
		if note.client != "" {
			attrs = append(attrs, "client", note.client)
		}
		if note.device != "" {
			attrs = append(attrs, "device", note.device)
		}
		if note.refused != "" {
			attrs = append(attrs, "refused", note.refused)
		}
		s.log.Info("http", attrs...)
	})
}

// reqNote is what a handler tells the access log, and the upgrade
// metrics, about its request: who it authenticated as and why it was
// refused. accessLog puts one in every request's context; only the
// request's handler goroutine writes it, before it returns. Names only,
// never a credential.
type reqNote struct {
	client  string // client name, once authenticated
	device  string // device id, once an agent authenticated
	refused string // why an upgrade was refused (refused* constants)
}

type noteKey struct{}

// reqState is what accessLog keeps of one request, in one allocation: the
// recorder the answer goes through, the note, and, once Server.client has
// checked the key, the client the request stands for and the credentials
// the key was found in (Server.scopeAndDevice). It is the request's
// context too, net/http's with these as its values: a context and a copy
// of the request per value would cost every REST call garbage of its own.
type reqState struct {
	context.Context // net/http's, which reqState extends

	rec  statusRecorder
	note reqNote
	// Set by Server.client before it calls the endpoint's handler, and
	// not changed after: authed says that client and creds are.
	authed bool
	client clientID
	creds  credView
}

// Value answers for the note and, once authed, for the client and its
// credentials; every other key is the request context's.
func (st *reqState) Value(key any) any {
	switch key.(type) {
	case noteKey:
		return &st.note
	case clientKey:
		if st.authed {
			return &st.client
		}
	case credViewKey:
		if st.authed {
			return &st.creds
		}
	}
	return st.Context.Value(key)
}

// noteOf returns r's note; without accessLog (handlers called directly)
// it returns a throwaway one, so callers need not check.
func noteOf(r *http.Request) *reqNote {
	if n, ok := r.Context().Value(noteKey{}).(*reqNote); ok {
		return n
	}
	return &reqNote{}
}

// noteRefusal records why r's upgrade is refused.
func noteRefusal(r *http.Request, reason string) { noteOf(r).refused = reason }

// statusRecorder notes the status and size of an answer. It passes
// Hijack through for WebSocket upgrades and Flush for streaming.
type statusRecorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	hijacked bool
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, rw, err := h.Hijack()
	if err == nil {
		w.hijacked = true
	}
	return c, rw, err
}

func (w *statusRecorder) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
