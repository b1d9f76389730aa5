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
func readConfig(name string, args []string, getenv func(string) string) (*config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f config
	fs.StringVar(&f.configFile, "config", "", "YAML config file (e.g. /etc/tether/agent.yaml)")
	fs.StringVar(&f.Relay, "relay", "", "relay URL, ws:// or wss:// (env TETHER_RELAY)")
	fs.StringVar(&f.Token, "token", "", "device token (env TETHER_TOKEN; prefer --token-file)")
	fs.StringVar(&f.TokenFile, "token-file", "", "file holding the device token")
	fs.StringVar(&f.Board, "board", "", "board: periph (real hardware from the config; the default) or mock (simulated Pi)")
	fs.StringVar(&f.State, "state", "", "state directory for the journal")
	fs.IntVar(&f.Credits, "credits", 0, "requests run at once (env TETHER_CREDITS; default 1)")
	fs.DurationVar(&f.PingPeriod, "ping", 0, "ping period (default: the relay's)")
	fs.DurationVar(&f.BackoffMax, "backoff-max", 0, "cap of the reconnect backoff (default 30s)")
	fs.StringVar(&f.LogFormat, "log-format", "", "log format: text or json (default text)")
	fs.StringVar(&f.LogLevel, "log-level", "", "log level: debug, info, warn, error (default info)")
	fs.StringVar(&f.StatusAddr, "status-addr", "", "serve /healthz and /status on this address, e.g. 127.0.0.1:9101")
	fs.StringVar(&f.ExecLog, "mock-exec-log", "", "mock board: append each executed request id to this file")
	fs.DurationVar(&f.MockDelay, "mock-delay", 0, "mock board: time each request takes")
	fs.Int64Var(&f.compactBytes, "journal-compact-bytes", 0, "journal size that triggers a compaction (default 1 MiB)")
	fs.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	fs.StringVar(&f.caFile, "ca", "", "PEM file of CAs to verify a wss:// relay with (default: system roots)")
	fs.StringVar(&f.certFile, "cert", "", "client certificate (PEM) for mutual TLS; the relay maps its CN/SAN to the device")
	fs.StringVar(&f.keyFile, "key", "", "private key (PEM) of --cert")
	fs.BoolVar(&f.insecure, "insecure", false, "allow plain ws:// to a relay that is not on loopback")
	fs.Usage = func() {}
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
	if v := getenv("TETHER_CREDITS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("TETHER_CREDITS: %w", err)
		}
		cfg.Credits = n
	}

	// Flags win over everything set explicitly.
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	str := func(name string, dst *string, v string) {
		if set[name] {
			*dst = v
		}
	}
	str("relay", &cfg.Relay, f.Relay)
	str("token", &cfg.Token, f.Token)
	str("token-file", &cfg.TokenFile, f.TokenFile)
	str("board", &cfg.Board, f.Board)
	str("state", &cfg.State, f.State)
	str("log-format", &cfg.LogFormat, f.LogFormat)
	str("log-level", &cfg.LogLevel, f.LogLevel)
	str("status-addr", &cfg.StatusAddr, f.StatusAddr)
	if set["credits"] {
		cfg.Credits = f.Credits
	}
	if set["ping"] {
		cfg.PingPeriod = f.PingPeriod
	}
	if set["backoff-max"] {
		cfg.BackoffMax = f.BackoffMax
	}
	cfg.ExecLog, cfg.MockDelay, cfg.configFile = f.ExecLog, f.MockDelay, f.configFile
	cfg.compactBytes = f.compactBytes
	cfg.caFile, cfg.certFile, cfg.keyFile, cfg.insecure = f.caFile, f.certFile, f.keyFile, f.insecure
	cfg.tokenFlag = set["token"]
	cfg.tokenFileFlag = set["token-file"]
	// What a flag or the environment set is held to the file's rules.
	switch {
	case (set["credits"] || getenv("TETHER_CREDITS") != "") && (cfg.Credits < 1 || cfg.Credits > protocol.MaxPull):
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
