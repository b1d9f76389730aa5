package relay

import (
	"log/slog"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Config holds the relay's settings. A zero field means the value from
// DefaultConfig, so tests can set just the timings they care about.
type Config struct {
	// Listen is the TCP address ListenAndServe binds.
	Listen string
	// DataDir holds relay.db, credentials.json and credentials.lock.
	// It is required.
	DataDir string

	// QueueLimit bounds the queued requests of one device.
	QueueLimit int
	// MaxAttempts is how often a request may be delivered before it fails
	// with code undeliverable.
	MaxAttempts int
	// DefaultTimeout applies to submits without a timeout.
	DefaultTimeout time.Duration
	// MaxTimeout caps a submit's timeout.
	MaxTimeout time.Duration

	// PingPeriod is how often the relay pings an agent. A session silent
	// for protocol.DeadAfter(PingPeriod) is dropped.
	PingPeriod time.Duration
	// HelloTimeout bounds the wait for an agent's hello after the upgrade.
	HelloTimeout time.Duration
	// MaxFrame is the largest frame accepted from an agent and the largest
	// REST request body.
	MaxFrame int
	// WriteTimeout bounds every WebSocket write.
	WriteTimeout time.Duration
	// SendQueue bounds the control frames waiting for a session's writer.
	SendQueue int

	// ResultRetention is how long finished requests are kept.
	ResultRetention time.Duration
	// MaxRetained bounds the number of finished requests kept; the oldest
	// go first.
	MaxRetained int
	// EventsKept is how many events are kept per device.
	EventsKept int

	// MaxWait caps the ?wait= of long-polls.
	MaxWait time.Duration
	// SweepInterval is how often queued requests are checked for expiry
	// and old results deleted. It bounds how late an expiry is reported.
	SweepInterval time.Duration
	// ShutdownTimeout bounds ListenAndServe's graceful shutdown.
	ShutdownTimeout time.Duration

	// Version is reported to agents in welcome.
	Version string
	// Logger receives the relay's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the default settings. DataDir is left empty.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		QueueLimit:      1000,
		MaxAttempts:     5,
		DefaultTimeout:  30 * time.Second,
		MaxTimeout:      protocol.MaxTimeoutMs * time.Millisecond,
		PingPeriod:      protocol.PingPeriod,
		HelloTimeout:    10 * time.Second,
		MaxFrame:        protocol.MaxFrame,
		WriteTimeout:    10 * time.Second,
		SendQueue:       64,
		ResultRetention: 24 * time.Hour,
		MaxRetained:     100_000,
		EventsKept:      1000,
		MaxWait:         60 * time.Second,
		SweepInterval:   250 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second,
		Version:         "dev",
	}
}

// withDefaults returns c with every zero field replaced by its default.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setDefault(&c.Listen, d.Listen)
	setDefault(&c.QueueLimit, d.QueueLimit)
	setDefault(&c.MaxAttempts, d.MaxAttempts)
	setDefault(&c.DefaultTimeout, d.DefaultTimeout)
	setDefault(&c.MaxTimeout, d.MaxTimeout)
	setDefault(&c.PingPeriod, d.PingPeriod)
	setDefault(&c.HelloTimeout, d.HelloTimeout)
	setDefault(&c.MaxFrame, d.MaxFrame)
	setDefault(&c.WriteTimeout, d.WriteTimeout)
	setDefault(&c.SendQueue, d.SendQueue)
	setDefault(&c.ResultRetention, d.ResultRetention)
	setDefault(&c.MaxRetained, d.MaxRetained)
	setDefault(&c.EventsKept, d.EventsKept)
	setDefault(&c.MaxWait, d.MaxWait)
	setDefault(&c.SweepInterval, d.SweepInterval)
	setDefault(&c.ShutdownTimeout, d.ShutdownTimeout)
	setDefault(&c.Version, d.Version)
	if c.MaxTimeout > protocol.MaxTimeoutMs*time.Millisecond {
		c.MaxTimeout = protocol.MaxTimeoutMs * time.Millisecond
	}
	if c.DefaultTimeout > c.MaxTimeout {
		c.DefaultTimeout = c.MaxTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
