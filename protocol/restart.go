package protocol

import (
	"strconv"
	"strings"
	"time"
)

// CloseRestart is the close code (RFC 6455 "service restart") of a relay
// that is shutting down. Its reason, made by RestartReason, tells each
// agent when to come back.
const CloseRestart = 1012

// ReplacedReason is the reason of the close (1000) that ends an agent's
// session when another connection of the same device takes over. An agent
// that reconnects never sees it for its own earlier session, which it has
// already given up: it means a second agent holds the device's credentials.
const ReplacedReason = "replaced by a newer session"

// MaxRestartDelay bounds the delay an agent accepts from a close reason.
const MaxRestartDelay = 5 * time.Minute

const restartPrefix = "restart reconnect_ms="

// RestartReason is the close reason that asks an agent to reconnect after
// d. A relay gives each of its agents a different d, so a fleet comes back
// spread over time at the rate the relay admits instead of all at once.
func RestartReason(d time.Duration) string {
	return restartPrefix + strconv.FormatInt(max(d, 0).Milliseconds(), 10)
}

// ParseRestart returns the delay a close frame asks for: ok only for
// CloseRestart with a reason made by RestartReason. The delay is capped at
// MaxRestartDelay.
func ParseRestart(code int, reason string) (d time.Duration, ok bool) {
	if code != CloseRestart {
		return 0, false
	}
	ms, found := strings.CutPrefix(reason, restartPrefix)
	if !found {
		return 0, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	// Capped before it becomes a duration, which a huge count overflows.
	return time.Duration(min(n, MaxRestartDelay.Milliseconds())) * time.Millisecond, true
}
