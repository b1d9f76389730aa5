package relay

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

const (
	// maxRetryAfter caps the Retry-After the relay hands out, so a client
	// refused in a deep backlog is not sent away for too long.
	maxRetryAfter = 60 * time.Second
	// fullRetryAfter is the Retry-After when MaxConns is reached: sessions
	// end slowly, so there is no point in asking again soon.
	fullRetryAfter = 10 * time.Second
)

// admission decides which /v1/agent upgrades go ahead. A token bucket
// (AdmitRate, AdmitBurst) bounds the upgrades per second; MaxConns bounds
// the sessions alive at once. Refusals happen before the upgrade and before
// authentication, so an overloaded relay spends almost nothing on them.
type admission struct {
	bucket *rate.Limiter
	every  time.Duration // 1/AdmitRate
	max    int64
	conns  atomic.Int64 // sessions admitted and not yet ended

	mu sync.Mutex
	// Guarded by mu:
	// nextSlot is when the next refused client is told to come back.
	// Each refusal books the following slot, 1/AdmitRate later, so the
	// clients of a storm return spread out at about the rate the bucket
	// admits instead of all at once.
	nextSlot time.Time

	// onAdmit and onRefuse, when set (tests), are called after every
	// successful upgrade (with the time the bucket admitted it) and every
	// refusal by the bucket.
	onAdmit, onRefuse atomic.Pointer[func(time.Time)]
}

func newAdmission(cfg Config) *admission {
	every := time.Duration(float64(time.Second) / cfg.AdmitRate)
	if math.IsInf(cfg.AdmitRate, 1) {
		every = 0
	}
	// A rate so low that one slot outlasts the longest wait gives every
	// refusal that wait, rather than a slot past it and then 1 s again.
	every = min(every, maxRetryAfter-time.Second)
	return &admission{
		bucket: rate.NewLimiter(rate.Limit(cfg.AdmitRate), cfg.AdmitBurst),
		every:  every,
		max:    int64(cfg.MaxConns),
	}
}

// take asks for one upgrade now. When refused it returns how long the
// client should wait.
func (a *admission) take(now time.Time) (time.Duration, bool) {
	if a.bucket.AllowN(now, 1) {
		return 0, true
	}
	if f := a.onRefuse.Load(); f != nil {
		(*f)(now)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	slot := a.nextSlot
	if earliest := now.Add(time.Second); slot.Before(earliest) || slot.After(now.Add(maxRetryAfter)) {
		// Fresh after a quiet spell; or past the longest wait, when more
		// were refused than that wait admits at the rate: start again from
		// the nearest slot, so that those are spread over the wait again
		// rather than all sent back at its end together.
		slot = earliest
	}
	a.nextSlot = slot.Add(a.every)
	return slot.Sub(now), false
}

// open counts a session about to be upgraded; it fails at MaxConns.
func (a *admission) open() bool {
	if a.conns.Add(1) > a.max {
		a.conns.Add(-1)
		return false
	}
	return true
}

func (a *admission) close() { a.conns.Add(-1) }

func (a *admission) admitted(now time.Time) {
	if f := a.onAdmit.Load(); f != nil {
		(*f)(now)
	}
}

// retryAfter formats d as whole seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	s := int64(math.Ceil(d.Seconds()))
	return strconv.FormatInt(max(s, 1), 10)
}

// refuseBusy answers 503 with Retry-After.
func refuseBusy(w http.ResponseWriter, wait time.Duration, msg string) {
	w.Header().Set("Retry-After", retryAfter(wait))
	writeError(w, http.StatusServiceUnavailable, codeUnavailable, msg)
}

// admitAgent runs the checks that come before any authentication work on
// /v1/agent: browsers are refused (agents never send Origin, and a page
// must not be able to open an agent session with a token it got hold of),
// then the admission bucket. It reports whether to go on, and when the
// bucket admitted the request.
func (s *Server) admitAgent(w http.ResponseWriter, r *http.Request) (time.Time, bool) {
	if r.Header.Get("Origin") != "" {
		noteRefusal(r, refusedOrigin)
		writeError(w, http.StatusForbidden, codeForbidden, "browsers may not open agent sessions")
		return time.Time{}, false
	}
	now := time.Now()
	if wait, ok := s.guard.admit.take(now); !ok {
		noteRefusal(r, refusedAdmission)
		refuseBusy(w, wait, "relay is admitting agents at its configured rate; retry later")
		return time.Time{}, false
	}
	return now, true
}
