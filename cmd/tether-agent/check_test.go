package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// check refuses what the agent refuses at start, whether it comes from a
// flag, the environment or the file, and accepts what the agent accepts.
func TestCheckAgreesWithAgentStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // in stderr; "" means check passes
	}{
		{name: "ws loopback", args: []string{"--relay", "ws://127.0.0.1:9"}},
		{name: "wss", args: []string{"--relay", "wss://relay.example.com"}},
		{name: "ws remote insecure", args: []string{"--relay", "ws://relay.example.com", "--insecure"}},
		{name: "ws remote", args: []string{"--relay", "ws://relay.example.com"}, want: "plain ws://"},
		{name: "ws remote from env", env: map[string]string{"TETHER_RELAY": "ws://10.0.0.1:8080"}, want: "plain ws://"},
		{name: "http", args: []string{"--relay", "http://127.0.0.1:9"}, want: "scheme must be ws or wss"},
		{name: "https from env", env: map[string]string{"TETHER_RELAY": "https://relay.example.com"}, want: "scheme must be ws or wss"},
		{name: "host:port", args: []string{"--relay", "127.0.0.1:8080"}, want: "scheme must be ws or wss (ws://HOST:PORT"},
		{name: "host", args: []string{"--relay", "relay.example.com"}, want: "scheme must be ws or wss (ws://HOST:PORT"},
		{name: "credits from env", args: []string{"--relay", "ws://127.0.0.1:9"}, env: map[string]string{"TETHER_CREDITS": "2000"}, want: "credits: want 1 to 1024"},
		{name: "credits flag", args: []string{"--relay", "ws://127.0.0.1:9", "--credits", "-1"}, want: "credits: want 1 to 1024"},
		{name: "credits flag zero", args: []string{"--relay", "ws://127.0.0.1:9", "--credits", "0"}, want: "credits: want 1 to 1024"},
		{name: "log level flag", args: []string{"--relay", "ws://127.0.0.1:9", "--log-level", "loud"}, want: "log level: want debug, info, warn or error"},
		{name: "log format flag", args: []string{"--relay", "ws://127.0.0.1:9", "--log-format", "yaml"}, want: "log format: want text or json"},
		{name: "credits max", args: []string{"--relay", "ws://127.0.0.1:9", "--credits", "1024"}},
		{name: "missing CA", args: []string{"--relay", "wss://relay.example.com", "--ca", "/nonexistent/ca.pem"}, want: "CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"TETHER_TOKEN": "tdv_x"}
			for k, v := range tc.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			args := append([]string{"--board", "mock"}, tc.args...)
			err := check(args, &stdout, &stderr, func(k string) string { return env[k] })
			if tc.want == "" {
				if err != nil || !strings.HasSuffix(stdout.String(), "\nok\n") {
					t.Fatalf("check: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
				}
				return
			}
			if !errors.Is(err, errCheckFailed) || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("check: %v, want a failure naming %q\nstdout:\n%s\nstderr:\n%s", err, tc.want, &stdout, &stderr)
			}
			if strings.Contains(stdout.String(), "\nok\n") {
				t.Fatalf("check printed ok for a failure:\n%s", &stdout)
			}
		})
	}
}

// The agent's --help names check, and check's --help is its own.
func TestUsageNamesCheck(t *testing.T) {
	var agent, chk bytes.Buffer
	printUsage(&agent, "tether-agent")
	printUsage(&chk, "tether-agent check")
	if !strings.HasPrefix(agent.String(), "usage: tether-agent --relay") || !strings.Contains(agent.String(), "\n       tether-agent check [--config FILE]") {
		t.Errorf("tether-agent --help:\n%s", &agent)
	}
	if !strings.HasPrefix(chk.String(), "usage: tether-agent check [--config FILE]") || strings.Contains(chk.String(), "--relay URL") {
		t.Errorf("tether-agent check --help:\n%s", &chk)
	}
}
