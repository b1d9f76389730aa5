// Command tether-agent runs on device B: it connects out to a tether relay,
// pulls requests when it is free and runs them on the board's peripherals.
//
//	tether-agent --relay ws://relay:8080 --token-file /etc/tether/token --board periph --config /etc/tether/agent.yaml
//	tether-agent --relay ws://127.0.0.1:8080 --token TOKEN --board mock
//	tether-agent check --config /etc/tether/agent.yaml   # validate, open the board, list resources
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw"
	"github.com/tetherhq/tether/hw/mock"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tether-agent:", err)
		os.Exit(1)
	}
}

// board is what the agent runs requests on: an executor that also
// describes itself, watches inputs and can drive outputs safe.
type board interface {
	agent.Executor
	agent.Describer
	Run(ctx context.Context, emit func(string, json.RawMessage)) error
	Halt() error
	Close() error
}

func run(args []string) (err error) {
	if len(args) > 0 && args[0] == "check" {
		return check(args[1:], os.Stdout, os.Stderr, os.Getenv)
	}
	cfg, err := loadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	if cfg.showVersion {
		fmt.Println("tether-agent", version)
		return nil
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel)
	slog.SetDefault(log)

	b, err := openBoard(cfg, log)
	if err != nil {
		return err
	}
	// Opening the board drove every output to its initial level and every
	// PWM pin low, also after a crash: each is driven once at start.
	defer b.Close()

	acfg, err := cfg.agentConfig(log)
	if err != nil {
		return err
	}
	if cfg.State == "" {
		log.Warn("no --state directory: what the agent ran is remembered in memory only, so a restart loses results not yet acknowledged and the relay ends what was running as interrupted; set state: (packages use /var/lib/tether)")
	}
	a, err := agent.New(acfg, b)
	if err != nil {
		return err
	}
	// Close syncs the journal: acks are buffered until the next sync, and
	// an ack lost here makes the agent resend an acknowledged result
	// after a restart.
	defer func() {
		if cerr := a.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("tether-agent starting", "version", version, "relay", cfg.Relay, "board", cfg.Board, "credits", acfg.Credits)

	var wg sync.WaitGroup
	if cfg.StatusAddr != "" {
		boardName, _, _ := b.Describe()
		ss, err := listenStatus(cfg.StatusAddr, a.Status, agentStatus{Version: version, Board: boardName, Relay: cfg.Relay})
		if err != nil {
			return err
		}
		log.Info("status server listening", "addr", ss.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ss.Run(ctx); err != nil {
				log.Error("status server stopped", "err", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := b.Run(ctx, func(name string, data json.RawMessage) {
			if err := a.Emit(name, data); err != nil {
				log.Warn("event not queued", "name", name, "err", err)
			}
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("input watcher stopped", "err", err)
		}
	}()
	err = a.Run(ctx)
	stop()
	wg.Wait()
	if herr := b.Halt(); herr != nil {
		log.Warn("could not drive outputs to their safe state", "err", herr)
	}
	log.Info("tether-agent stopped")
	return err
}

// agentConfig maps the configuration onto the agent's. check calls it too,
// then agent.Config.Validate, so that it refuses what the agent refuses.
func (cfg *config) agentConfig(log *slog.Logger) (agent.Config, error) {
	acfg := agent.DefaultConfig()
	acfg.Relay = cfg.Relay
	acfg.Token = cfg.token
	if cfg.tokenInFile {
		acfg.TokenFile = cfg.TokenFile
	}
	acfg.Insecure = cfg.insecure
	if cfg.caFile != "" || cfg.certFile != "" || cfg.keyFile != "" {
		tc, err := agent.TLSConfig(cfg.caFile, cfg.certFile, cfg.keyFile)
		if err != nil {
			return acfg, err
		}
		acfg.TLS = tc
	}
	acfg.Credits = cfg.Credits
	acfg.StateDir = cfg.State
	if cfg.compactBytes > 0 {
		acfg.CompactBytes = cfg.compactBytes
	}
	acfg.Version = version
	acfg.Logger = log
	if cfg.PingPeriod > 0 {
		acfg.PingPeriod = cfg.PingPeriod
	}
	if cfg.BackoffMax > 0 {
		acfg.BackoffMax = cfg.BackoffMax
		acfg.BackoffInitial = min(acfg.BackoffInitial, cfg.BackoffMax)
	}
	return acfg, nil
}

func openBoard(cfg *config, log *slog.Logger) (board, error) {
	switch cfg.Board {
	case "mock":
		if h := cfg.Hardware; len(h.GPIO)+len(h.I2C)+len(h.SPI)+len(h.PWM) > 0 {
			log.Warn("--board mock offers the whole simulated header under its own names (GPIO2-GPIO27, i2c bus 1, SPI0.0); the config's gpio, i2c, spi and pwm entries are ignored")
		}
		return mock.New(mock.Options{Version: version, ExecLog: cfg.ExecLog, Delay: cfg.MockDelay})
	case "periph":
		return hw.Open(cfg.Hardware, hw.Options{Version: version, Logger: log})
	default:
		return nil, fmt.Errorf("--board must be mock or periph, got %q", cfg.Board)
	}
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if strings.EqualFold(format, "json") {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
