package main

import (
	"errors"
	"os"
	"testing"

	"github.com/tetherhq/tether/hw"
	"github.com/tetherhq/tether/protocol"
)

// FuzzParseFile feeds arbitrary bytes to the agent's config-file parser
// (agent keys and hardware section together). The file is local and
// written by an operator, but it is parsed as root on the board before
// anything else runs, so it must never panic or hang, and whatever it
// accepts must be within the documented bounds.
func FuzzParseFile(f *testing.F) {
	if b, err := os.ReadFile("../../deploy/agent.example.yaml"); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		"relay: wss://relay.example.com\ntoken_file: /etc/tether/token\ncredits: 2\n",
		"relay: ws://127.0.0.1:8080\nping_period: 20s\nbackoff_max: 1m\nlog_format: json\n",
		"gpio:\n  - {name: led, pin: GPIO17, direction: out}\n",
		"credits: 100000\n",
		"relay: &a x\ntoken: *a\n",
		"relay: [1, 2]\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := defaultConfig()
		err := parseFile("agent.yaml", data, &cfg)
		if err != nil {
			for _, e := range flatten(err) {
				var ce *hw.ConfigError
				if !errors.As(e, &ce) {
					t.Fatalf("error %T %v is not a *hw.ConfigError", e, e)
				}
			}
			return
		}
		if cfg.Credits < 1 || cfg.Credits > protocol.MaxPull {
			t.Fatalf("accepted credits %d", cfg.Credits)
		}
	})
}
