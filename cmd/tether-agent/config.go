package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/hw"
	"github.com/tetherhq/tether/protocol"
)

// config is the agent's configuration: the file (if any), then environment
// variables, then flags, each overriding the one before.
type config struct {
	Relay      string        `yaml:"relay"`
	Token      string        `yaml:"token"`
	TokenFile  string        `yaml:"token_file"`
	Board      string        `yaml:"board"`
	State      string        `yaml:"state"`
	Credits    int           `yaml:"credits"`
	PingPeriod time.Duration `yaml:"ping_period"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	LogFormat  string        `yaml:"log_format"`
	LogLevel   string        `yaml:"log_level"`
	StatusAddr string        `yaml:"status_addr"`

	// Hardware is read from the same file by hw.ParseConfig.
	Hardware hw.Config `yaml:"-"`

	// Flag-only settings.
	configFile    string
	showVersion   bool
	token         string // resolved from Token or TokenFile
	tokenFlag     bool   // --token was given
	tokenFileFlag bool   // --token-file was given
	tokenInFile   bool   // token came from TokenFile, so rotation writes it back

	// Transport security, flags only.
	caFile    string // --ca: PEM CAs that replace the system roots
	certFile  string // --cert/--key: client certificate for mutual TLS
	keyFile   string
	insecure  bool   // --insecure: allow ws:// to a non-loopback relay
	ExecLog   string `yaml:"-"`
	MockDelay time.Duration
	// compactBytes overrides the journal's compaction threshold (tests).
	compactBytes int64
}

func defaultConfig() config {
	return config{Board: "periph", Credits: 1, LogFormat: "text", LogLevel: "info"}
}

func loadConfig(args []string, getenv func(string) string) (*config, error) {
	cfg, err := readConfig("tether-agent", args, getenv)
	if err != nil || cfg.showVersion {
		return cfg, err
	}
	return cfg, cfg.credentials(getenv)
}

// readConfig merges the file, the environment and the flags without
// requiring a relay or a token, so that check can report on a partial
// configuration.
//
// The flags are parsed twice. The first pass, into a zero config, finds
// --config, --version and --help and reports bad flags; the second, after
// the file and the environment, parses them into the merged config, where
// each flag given overrides what came before and the rest keep it.
func readConfig(name string, args []string, getenv func(string) string) (*config, error) {
	var f config
	fs := flagSet(name, &f)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			printUsage(os.Stdout, name)
			fs.PrintDefaults()
			os.Exit(0)
		}
		return nil, fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if f.showVersion {
		return &f, nil
	}

	cfg := defaultConfig()
	if f.configFile != "" {
		data, err := os.ReadFile(f.configFile)
		if err != nil {
			return nil, err
		}
		if err := parseFile(f.configFile, data, &cfg); err != nil {
			return nil, err
		}
	}
	if v := getenv("TETHER_RELAY"); v != "" {
		cfg.Relay = v
	}
	if v := getenv("TETHER_TOKEN"); v != "" {
		cfg.Token = v
	}
	envCredits := getenv("TETHER_CREDITS")
	if envCredits != "" {
		n, err := strconv.Atoi(envCredits)
		if err != nil {
			return nil, fmt.Errorf("TETHER_CREDITS: %w", err)
		}
		cfg.Credits = n
	}

	// Flags win over everything set explicitly.
	flagSet(name, &cfg).Parse(args) // parsed above: it cannot fail
	creditsFlag := false
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "credits":
			creditsFlag = true
		case "token":
			cfg.tokenFlag = true
		case "token-file":
			cfg.tokenFileFlag = true
		}
	})
	// What a flag or the environment set is held to the file's rules.
	switch {
	case (creditsFlag || envCredits != "") && (cfg.Credits < 1 || cfg.Credits > protocol.MaxPull):
		return nil, fmt.Errorf("credits: want 1 to %d, got %d", protocol.MaxPull, cfg.Credits)
	case cfg.LogFormat != "" && cfg.LogFormat != "text" && cfg.LogFormat != "json":
		return nil, fmt.Errorf("log format: want text or json, got %q", cfg.LogFormat)
	case cfg.Board != "" && cfg.Board != "periph" && cfg.Board != "mock":
		return nil, fmt.Errorf("board: want periph or mock, got %q", cfg.Board)
	}
	if cfg.LogLevel != "" {
		var lv slog.Level
		if lv.UnmarshalText([]byte(cfg.LogLevel)) != nil {
			return nil, fmt.Errorf("log level: want debug, info, warn or error, got %q", cfg.LogLevel)
		}
	}
	return &cfg, nil
}

// flagSet returns the agent's flags, bound to c's fields. What c holds is
// each flag's default: zero, as --help shows them, or what the file and
// the environment set, which a flag not given leaves as it is.
func flagSet(name string, c *config) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&c.configFile, "config", c.configFile, "YAML config file (e.g. /etc/tether/agent.yaml)")
	fs.StringVar(&c.Relay, "relay", c.Relay, "relay URL, ws:// or wss:// (env TETHER_RELAY)")
	fs.StringVar(&c.Token, "token", c.Token, "device token (env TETHER_TOKEN; prefer --token-file)")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "file holding the device token")
	fs.StringVar(&c.Board, "board", c.Board, "board: periph (real hardware from the config; the default) or mock (simulated Pi)")
	fs.StringVar(&c.State, "state", c.State, "state directory for the journal")
	fs.IntVar(&c.Credits, "credits", c.Credits, "requests run at once (env TETHER_CREDITS; default 1)")
	fs.DurationVar(&c.PingPeriod, "ping", c.PingPeriod, "ping period (default: the relay's)")
	fs.DurationVar(&c.BackoffMax, "backoff-max", c.BackoffMax, "cap of the reconnect backoff (default 30s)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json (default text)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn, error (default info)")
	fs.StringVar(&c.StatusAddr, "status-addr", c.StatusAddr, "serve /healthz and /status on this address, e.g. 127.0.0.1:9101")
	fs.StringVar(&c.ExecLog, "mock-exec-log", c.ExecLog, "mock board: append each executed request id to this file")
	fs.DurationVar(&c.MockDelay, "mock-delay", c.MockDelay, "mock board: time each request takes")
	fs.Int64Var(&c.compactBytes, "journal-compact-bytes", c.compactBytes, "journal size that triggers a compaction (default 1 MiB)")
	fs.BoolVar(&c.showVersion, "version", c.showVersion, "print the version and exit")
	fs.StringVar(&c.caFile, "ca", c.caFile, "PEM file of CAs to verify a wss:// relay with (default: system roots)")
	fs.StringVar(&c.certFile, "cert", c.certFile, "client certificate (PEM) for mutual TLS; the relay maps its CN/SAN to the device")
	fs.StringVar(&c.keyFile, "key", c.keyFile, "private key (PEM) of --cert")
	fs.BoolVar(&c.insecure, "insecure", c.insecure, "allow plain ws:// to a relay that is not on loopback")
	return fs
}

// printUsage prints the usage line of the agent, or of check when name
// is "tether-agent check"; the flags, which both take, follow it.
func printUsage(w io.Writer, name string) {
	const checkLine = "tether-agent check [--config FILE] [flags]   validate the configuration, open the board, list its resources"
	if name == "tether-agent check" {
		fmt.Fprintln(w, "usage: "+checkLine)
		return
	}
	fmt.Fprintln(w, "usage: tether-agent --relay URL (--token TOKEN | --token-file FILE) [--board mock|periph] [--config FILE] [flags]")
	fmt.Fprintln(w, "       "+checkLine)
}

// credentials checks that a relay is set and resolves the token.
func (cfg *config) credentials(getenv func(string) string) error {
	if cfg.Relay == "" {
		return errors.New("no relay: set --relay, TETHER_RELAY or relay: in the config file")
	}
	cfg.token = cfg.Token
	// The token file is read unless a token with precedence over it is
	// set: --token, or TETHER_TOKEN over a token_file from the file. An
	// explicit --token-file wins over TETHER_TOKEN, as flags win over the
	// environment.
	if cfg.TokenFile != "" && !cfg.tokenFlag && (cfg.tokenFileFlag || getenv("TETHER_TOKEN") == "") {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("token file: %w", err)
		}
		cfg.token = strings.TrimSpace(string(b))
		cfg.tokenInFile = true
	}
	if cfg.token == "" && cfg.certFile != "" {
		return nil // mutual TLS: the certificate identifies the device
	}
	if cfg.token == "" {
		return errors.New("no device token: set --token-file, --token or TETHER_TOKEN")
	}
	return nil
}
