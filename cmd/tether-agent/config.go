package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tetherhq/tether/hw"
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
	LogFormat  string        `yaml:"log_format"`
	LogLevel   string        `yaml:"log_level"`

	// Hardware is read from the same file by hw.ParseConfig.
	Hardware hw.Config `yaml:"-"`

	// Flag-only settings.
	configFile  string
	showVersion bool
	token       string // resolved from Token or TokenFile
	ExecLog     string `yaml:"-"`
	MockDelay   time.Duration
}

func defaultConfig() config {
	return config{Board: "periph", Credits: 1, LogFormat: "text", LogLevel: "info"}
}

func loadConfig(args []string, getenv func(string) string) (*config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("tether-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f config
	fs.StringVar(&f.configFile, "config", "", "YAML config file (e.g. /etc/tether/agent.yaml)")
	fs.StringVar(&f.Relay, "relay", "", "relay URL, ws:// or wss:// (env TETHER_RELAY)")
	fs.StringVar(&f.Token, "token", "", "device token (env TETHER_TOKEN; prefer --token-file)")
	fs.StringVar(&f.TokenFile, "token-file", "", "file holding the device token")
	fs.StringVar(&f.Board, "board", "", "board: periph (real hardware from the config) or mock (simulated Pi)")
	fs.StringVar(&f.State, "state", "", "state directory for the journal")
	fs.IntVar(&f.Credits, "credits", 0, "requests run at once (default 1)")
	fs.DurationVar(&f.PingPeriod, "ping", 0, "ping period (default: the relay's)")
	fs.StringVar(&f.LogFormat, "log-format", "", "log format: text or json")
	fs.StringVar(&f.LogLevel, "log-level", "", "log level: debug, info, warn, error")
	fs.StringVar(&f.ExecLog, "mock-exec-log", "", "mock board: append each executed request id to this file")
	fs.DurationVar(&f.MockDelay, "mock-delay", 0, "mock board: time each request takes")
	fs.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Println("usage: tether-agent --relay URL (--token TOKEN | --token-file FILE) [--board mock|periph] [--config FILE] [flags]")
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
		if err := yaml.Unmarshal(data, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", f.configFile, err)
		}
		hcfg, err := hw.ParseConfig(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.configFile, err)
		}
		cfg.Hardware = hcfg
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
	if set["credits"] {
		cfg.Credits = f.Credits
	}
	if set["ping"] {
		cfg.PingPeriod = f.PingPeriod
	}
	cfg.ExecLog, cfg.MockDelay, cfg.configFile = f.ExecLog, f.MockDelay, f.configFile

	if cfg.Relay == "" {
		return nil, errors.New("no relay: set --relay, TETHER_RELAY or relay: in the config file")
	}
	cfg.token = cfg.Token
	if cfg.TokenFile != "" && !set["token"] && getenv("TETHER_TOKEN") == "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		cfg.token = strings.TrimSpace(string(b))
	}
	if cfg.token == "" {
		return nil, errors.New("no device token: set --token-file, --token or TETHER_TOKEN")
	}
	return &cfg, nil
}
