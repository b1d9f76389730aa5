package relay

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/time/rate"

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
	// ReadTimeout bounds the reading of an HTTP request's headers, and of
	// a submission's body; IdleTimeout how long a keep-alive connection
	// may wait for its next request. A connection past either is closed.
	ReadTimeout time.Duration
	IdleTimeout time.Duration

	// AllowedOrigins lists the browser origins ("https://app.example.com")
	// besides the relay's own that may open /v1/client. Empty means
	// same-origin only; requests without an Origin header (services) are
	// not browsers and are not checked.
	AllowedOrigins []string
	// TicketTTL is how long a ticket from POST /v1/tickets stays valid.
	TicketTTL time.Duration
	// MaxTickets bounds the unused tickets held in memory; one client may
	// hold a tenth of them.
	MaxTickets int
	// ClientSendQueue bounds the frames waiting for a /v1/client
	// connection's writer. A client that lets it stay full for
	// WriteTimeout is disconnected as too slow.
	ClientSendQueue int
	// ClientMaxFrame is the largest frame accepted from a client.
	ClientMaxFrame int
	// ClientConns bounds the /v1/client connections one client (by name)
	// holds open at once; beyond it upgrades are answered 429. Each
	// connection costs goroutines and a send queue, so one key cannot
	// take the descriptors the agents need.
	ClientConns int

	// TLSCert and TLSKey are PEM files; when both are set the relay
	// serves HTTPS/WSS only. Server.ReloadTLS re-reads them (SIGHUP).
	TLSCert string
	TLSKey  string
	// ClientCA is a PEM bundle of CAs whose client certificates
	// authenticate agents (mutual TLS) as an alternative to tokens: the
	// certificate's DNS SANs or CN name the device. Needs TLSCert.
	ClientCA string

	// AdmitRate is how many /v1/agent upgrades per second the relay
	// admits, AdmitBurst how many it admits at once after a quiet spell.
	// The excess is answered 503 with Retry-After before any work is done,
	// so a reconnect storm after a restart is spread out in time.
	AdmitRate  float64
	AdmitBurst int
	// MaxConns bounds concurrent agent sessions; beyond it upgrades are
	// answered 503 with Retry-After.
	MaxConns int
	// ClientRate/ClientBurst limit submits per client key, and
	// DeviceRate/DeviceBurst submits per target device; the excess is
	// answered 429 with Retry-After. rate.Inf (the default) is no limit.
	ClientRate  float64
	ClientBurst int
	DeviceRate  float64
	DeviceBurst int
	// RotateGrace is how long a device's old token keeps working after
	// its agent confirmed a rotation, unless the rotation sets its own.
	RotateGrace time.Duration

	// MetricsAllow lists the networks whose hosts may GET /metrics. nil
	// means loopback only (127.0.0.0/8, ::1); an empty, non-nil list
	// serves /metrics to nobody. Requests carrying proxy headers
	// (Forwarded, X-Forwarded-For, X-Real-IP) are always refused.
	MetricsAllow []netip.Prefix

	// Version is reported to agents in welcome.
	Version string
	// Logger receives the relay's logs; nil discards them.
	Logger *slog.Logger
}

// HeapFloor is the room a relay process keeps between its live heap and
// the next garbage collection (internal/heapfloor): under load a relay's
// live heap is a few MiB, and with Go's default it would collect several
// times a second. tether-relay serve sets it unless GOGC is set.
const HeapFloor = 16 << 20

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
		ReadTimeout:     10 * time.Second,
		IdleTimeout:     2 * time.Minute,
		TicketTTL:       30 * time.Second,
		MaxTickets:      10_000,
		ClientSendQueue: 256,
		ClientConns:     64,
		ClientMaxFrame:  protocol.MaxClientFrame,
		AdmitRate:       500,
		AdmitBurst:      250,
		MaxConns:        10_000,
		ClientRate:      float64(rate.Inf),
		ClientBurst:     1,
		DeviceRate:      float64(rate.Inf),
		DeviceBurst:     1,
		RotateGrace:     10 * time.Minute,
		MetricsAllow:    loopbackNets(),
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
	setDefault(&c.ReadTimeout, d.ReadTimeout)
	setDefault(&c.IdleTimeout, d.IdleTimeout)
	setDefault(&c.TicketTTL, d.TicketTTL)
	setDefault(&c.MaxTickets, d.MaxTickets)
	setDefault(&c.ClientSendQueue, d.ClientSendQueue)
	setDefault(&c.ClientConns, d.ClientConns)
	setDefault(&c.ClientMaxFrame, d.ClientMaxFrame)
	setDefault(&c.AdmitRate, d.AdmitRate)
	setDefault(&c.AdmitBurst, d.AdmitBurst)
	setDefault(&c.MaxConns, d.MaxConns)
	setDefault(&c.ClientRate, d.ClientRate)
	setDefault(&c.ClientBurst, d.ClientBurst)
	setDefault(&c.DeviceRate, d.DeviceRate)
	setDefault(&c.DeviceBurst, d.DeviceBurst)
	setDefault(&c.RotateGrace, d.RotateGrace)
	setDefault(&c.Version, d.Version)
	if c.MetricsAllow == nil {
		c.MetricsAllow = d.MetricsAllow
	}
	// Agents refuse a welcome whose max_frame is below 1 KiB (SPEC §4).
	c.MaxFrame = max(c.MaxFrame, 1024)
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

// check refuses settings no relay can run with: after withDefaults, every
// limit, period and rate must be positive (zero means the default; a
// negative one is a mistake, and some would crash the relay or turn every
// agent away).
func (c Config) check() error {
	type setting struct {
		name string
		ok   bool
		v    any
	}
	d := func(name string, v time.Duration) setting { return setting{name, v > 0, v} }
	n := func(name string, v int) setting { return setting{name, v > 0, v} }
	r := func(name string, v float64) setting { return setting{name, v > 0, v} }
	for _, f := range []setting{
		n("QueueLimit", c.QueueLimit), n("MaxAttempts", c.MaxAttempts),
		d("DefaultTimeout", c.DefaultTimeout), d("MaxTimeout", c.MaxTimeout),
		d("PingPeriod", c.PingPeriod), d("HelloTimeout", c.HelloTimeout),
		d("WriteTimeout", c.WriteTimeout), n("SendQueue", c.SendQueue),
		d("ResultRetention", c.ResultRetention), n("MaxRetained", c.MaxRetained),
		n("EventsKept", c.EventsKept), d("MaxWait", c.MaxWait),
		d("SweepInterval", c.SweepInterval), d("ShutdownTimeout", c.ShutdownTimeout),
		d("ReadTimeout", c.ReadTimeout), d("IdleTimeout", c.IdleTimeout),
		d("TicketTTL", c.TicketTTL), n("MaxTickets", c.MaxTickets),
		n("ClientSendQueue", c.ClientSendQueue), n("ClientMaxFrame", c.ClientMaxFrame), n("ClientConns", c.ClientConns),
		r("AdmitRate", c.AdmitRate), n("AdmitBurst", c.AdmitBurst), n("MaxConns", c.MaxConns),
		r("ClientRate", c.ClientRate), n("ClientBurst", c.ClientBurst),
		r("DeviceRate", c.DeviceRate), n("DeviceBurst", c.DeviceBurst),
		d("RotateGrace", c.RotateGrace),
	} {
		if !f.ok {
			return fmt.Errorf("relay: %s must be positive, got %v", f.name, f.v)
		}
	}
	// Agents refuse a rotate frame with a longer grace, and a rotation
	// would then be sent and refused at every session.
	if maxGrace := protocol.MaxGraceMs * time.Millisecond; c.RotateGrace > maxGrace {
		return fmt.Errorf("relay: RotateGrace must be at most %v, got %v", maxGrace, c.RotateGrace)
	}
	return nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
