package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Config holds the agent's settings. Zero values are filled from
// DefaultConfig by New, so a caller only sets what it cares about.
type Config struct {
	// Relay is the relay's base URL (ws:// or wss://). If it has no path,
	// /v1/agent is appended.
	Relay string
	// Token is the device token sent as a Bearer credential. It may be
	// empty when TLS carries a client certificate (mutual TLS).
	Token string
	// TokenFile is the file Token was read from, where a token received by
	// in-band rotation is stored (atomically). Empty: the token came from
	// elsewhere, and rotations are refused (never confirmed), since a new
	// token would not survive a restart.
	TokenFile string
	// Insecure allows plain ws:// to a non-loopback relay.
	Insecure bool
	// Credits is the number of requests run at once (free worker slots).
	// Hardware is usually serial, so the default is 1.
	Credits int
	// PingPeriod is how often the agent pings; the relay's welcome may
	// override it. A session silent for 2.5 periods is dropped.
	PingPeriod time.Duration
	// HandshakeTimeout bounds dialing, the upgrade and the hello/welcome
	// exchange.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds each frame write.
	WriteTimeout time.Duration
	// MaxFrame is the largest frame accepted from the relay.
	MaxFrame int
	// BackoffInitial and BackoffMax shape the reconnect delay: exponential
	// with full jitter, never giving up.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// HealthyAfter is how long a session must last before the reconnect
	// backoff starts again from BackoffInitial.
	HealthyAfter time.Duration
	// OutboxLimit bounds results and events waiting for an ack. When it is
	// reached the agent stops pulling work instead of dropping anything.
	OutboxLimit int
	// DedupeCount and DedupeWindow bound how many finished requests are
	// remembered to answer duplicate deliveries.
	DedupeCount  int
	DedupeWindow time.Duration
	// ShutdownGrace is how long running requests may finish, and the
	// outbox may drain, after Run's context ends.
	ShutdownGrace time.Duration
	// StateDir holds the journal. Empty means no journal: finished
	// requests are remembered in memory only and a restart forgets them.
	StateDir string
	// CompactBytes is the journal size above which it is rewritten with
	// only what must be remembered.
	CompactBytes int64
	// Version is reported in hello.
	Version string
	// TLS is used for wss:// relays; nil means system roots.
	TLS *tls.Config
	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of DESIGN §3.
func DefaultConfig() Config {
	return Config{
		Credits:          1,
		PingPeriod:       protocol.PingPeriod,
		HandshakeTimeout: 10 * time.Second,
		WriteTimeout:     10 * time.Second,
		MaxFrame:         protocol.MaxFrame,
		BackoffInitial:   500 * time.Millisecond,
		BackoffMax:       30 * time.Second,
		HealthyAfter:     30 * time.Second,
		OutboxLimit:      1000,
		DedupeCount:      10000,
		DedupeWindow:     24 * time.Hour,
		ShutdownGrace:    5 * time.Second,
		CompactBytes:     1 << 20,
		Version:          "dev",
	}
}

// Validate reports the error New would return for c's settings, without
// opening the journal. "tether-agent check" uses it so that it accepts
// exactly what the agent accepts at start.
func (c Config) Validate() error {
	return c.fill()
}

// fill replaces zero fields with defaults and checks the rest.
func (c *Config) fill() error {
	d := DefaultConfig()
	if c.Credits == 0 {
		c.Credits = d.Credits
	}
	if c.PingPeriod == 0 {
		c.PingPeriod = d.PingPeriod
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = d.MaxFrame
	}
	if c.BackoffInitial == 0 {
		c.BackoffInitial = d.BackoffInitial
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = d.BackoffMax
	}
	if c.HealthyAfter == 0 {
		c.HealthyAfter = d.HealthyAfter
	}
	if c.OutboxLimit == 0 {
		c.OutboxLimit = d.OutboxLimit
	}
	if c.DedupeCount == 0 {
		c.DedupeCount = d.DedupeCount
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = d.DedupeWindow
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = d.ShutdownGrace
	}
	if c.CompactBytes == 0 {
		c.CompactBytes = d.CompactBytes
	}
	if c.Version == "" {
		c.Version = d.Version
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.Token == "" && !hasClientCert(c.TLS):
		return errors.New("agent: no device token or client certificate")
	case c.Credits < 1 || c.Credits > protocol.MaxPull:
		return fmt.Errorf("agent: credits must be 1..%d, got %d", protocol.MaxPull, c.Credits)
	case c.BackoffMax < c.BackoffInitial:
		return fmt.Errorf("agent: backoff max %v below initial %v", c.BackoffMax, c.BackoffInitial)
	}
	// A relay given as HOST:PORT does not even parse as a URL; it gets
	// the same answer as a wrong scheme, which says what to write.
	u, err := url.Parse(c.Relay)
	if err != nil || u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("agent: relay URL %q: scheme must be ws or wss (ws://HOST:PORT, wss://HOST)", c.Relay)
	}
	if err := checkTransport(u, c.Insecure); err != nil {
		return err
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/agent"
	}
	c.Relay = u.String()
	return nil
}
