package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Errors of the relay's access control and limits. They sit here rather
// than in errors.go so the security layer stays in its own files.
var (
	// ErrForbidden reports a client key used outside its scope (HTTP 403).
	ErrForbidden = errors.New("relay: forbidden")
	// ErrRateLimited reports a client or device over its rate limit (HTTP
	// 429). The error is a *RateLimitError carrying the wait.
	ErrRateLimited = errors.New("relay: rate limited")
)

// codeRateLimited is the API error code of a 429 from a rate limit (403s
// use codeForbidden, "forbidden").
const codeRateLimited = "rate_limited"

// RateLimitError is returned by Submit when a limit is exceeded.
type RateLimitError struct {
	Who        string        // "client NAME" or "device ID"
	RetryAfter time.Duration // when a token will be available
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("relay: %s is over its rate limit; retry in %v", e.Who, e.RetryAfter.Round(time.Millisecond))
}

// Unwrap makes errors.Is(err, ErrRateLimited) match.
func (e *RateLimitError) Unwrap() error { return ErrRateLimited }

// guard groups the relay's transport security, admission control, rate
// limits and credential rotation state. Server holds one.
type guard struct {
	tls     *tlsState // nil without TLS
	admit   *admission
	clients *limiters
	devices *limiters
	rot     *rotations
}

func newGuard(cfg Config) (*guard, error) {
	t, err := newTLSState(cfg)
	if err != nil {
		return nil, err
	}
	return &guard{
		tls:     t,
		admit:   newAdmission(cfg),
		clients: newLimiters(cfg.ClientRate, cfg.ClientBurst),
		devices: newLimiters(cfg.DeviceRate, cfg.DeviceBurst),
		rot:     newRotations(),
	}, nil
}

// limiters is one token bucket per key. Keys are authenticated names
// (client names, registered device ids), so the map is bounded by the
// credentials file.
type limiters struct {
	limit rate.Limit
	burst int

	mu sync.Mutex
	// Guarded by mu:
	m map[string]*rate.Limiter
}

func newLimiters(r float64, burst int) *limiters {
	return &limiters{limit: rate.Limit(r), burst: max(burst, 1), m: make(map[string]*rate.Limiter)}
}

// take spends one token of key's bucket, or reports how long until one is
// available without spending anything.
func (l *limiters) take(key string, now time.Time) (time.Duration, bool) {
	if l.limit == rate.Inf {
		return 0, true
	}
	l.mu.Lock()
	lim := l.m[key]
	if lim == nil {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.m[key] = lim
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// limitSubmit applies the per-client and per-device submit limits. The
// device bucket is only charged when the client bucket allowed the call.
func (s *Server) limitSubmit(ctx context.Context, device string) error {
	now := time.Now()
	if name, ok := ClientFrom(ctx); ok {
		if d, ok := s.guard.clients.take(name, now); !ok {
			return &RateLimitError{Who: "client " + name, RetryAfter: d}
		}
	}
	if d, ok := s.guard.devices.take(device, now); !ok {
		return &RateLimitError{Who: "device " + device, RetryAfter: d}
	}
	return nil
}

// writeGuardErr answers the security layer's errors; it reports whether
// err was one of them.
func writeGuardErr(w http.ResponseWriter, err error) bool {
	var rl *RateLimitError
	switch {
	case errors.As(err, &rl):
		w.Header().Set("Retry-After", retryAfter(rl.RetryAfter))
		writeError(w, http.StatusTooManyRequests, codeRateLimited, rl.Error())
	case errors.Is(err, ErrForbidden):
		writeError(w, http.StatusForbidden, codeForbidden, err.Error())
	default:
		return false
	}
	return true
}
