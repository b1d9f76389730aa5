package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/hw"
)

func TestParseFileShippedConfigs(t *testing.T) {
	for _, path := range []string{"../../deploy/packaging/agent.yaml", "../../deploy/agent.example.yaml"} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		c := defaultConfig()
		if err := parseFile(path, data, &c); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

func TestParseFileAgentKeys(t *testing.T) {
	src := `relay: wss://relay.example.com
token_file: /etc/tether/token
board: mock
state: /var/lib/tether
credits: 3
ping_period: 15s
backoff_max: 10s
log_format: json
log_level: debug
status_addr: 127.0.0.1:9101
gpio:
  - name: led
    pin: GPIO17
    direction: out
`
	c := defaultConfig()
	if err := parseFile("agent.yaml", []byte(src), &c); err != nil {
		t.Fatal(err)
	}
	want := config{
		Relay: "wss://relay.example.com", TokenFile: "/etc/tether/token", Board: "mock",
		State: "/var/lib/tether", Credits: 3, PingPeriod: 15 * time.Second, BackoffMax: 10 * time.Second,
		LogFormat: "json", LogLevel: "debug", StatusAddr: "127.0.0.1:9101",
	}
	got := c
	got.Hardware = hw.Config{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if len(c.Hardware.GPIO) != 1 || c.Hardware.GPIO[0].Name != "led" {
		t.Errorf("hardware section not read: %+v", c.Hardware)
	}
}

func TestParseFileEmpty(t *testing.T) {
	for _, src := range []string{"", "# only a comment\n", "---\n"} {
		c := defaultConfig()
		if err := parseFile("agent.yaml", []byte(src), &c); err != nil {
			t.Errorf("%q: %v", src, err)
		}
		if c.Board != "periph" || c.Credits != 1 {
			t.Errorf("%q: defaults changed: %+v", src, c)
		}
	}
}

// TestParseFileErrors checks that every problem is reported, each with the
// line and the field it is about.
func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // "line field" pairs, in order
	}{
		{"bad values", `relay: http://relay.example.com
credits: many
ping_period: 20
log_format: xml
log_level: loud
board: arduino
status_addr: 9101
`, []string{"1 relay", "2 credits", "3 ping_period", "4 log_format", "5 log_level", "6 board", "7 status_addr"}},
		{"unknown and repeated keys", `relay: ws://r
relya: ws://r
credits: 2
credits: 3
`, []string{"2 relya", "4 credits"}},
		{"wrong kinds", `relay:
  url: ws://r
state: [a, b]
credits: 0
`, []string{"2 relay", "3 state", "4 credits"}},
		{"agent and hardware errors together", `credits: x
gpio:
  - name: led
    pin: GPIO17
    direction: sideways
  - name: led
    pin: GPIO18
    direction: out
    colour: red
`, []string{"1 credits", "5 gpio[0].direction", "6 gpio[1].name", "9 gpio[1].colour"}},
		{"syntax", "relay: ws://r\n  credits: 2\n", []string{"2 "}},
		{"not a mapping", "- relay\n", []string{"1 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := defaultConfig()
			err := parseFile("agent.yaml", []byte(tt.src), &c)
			if err == nil {
				t.Fatal("no error")
			}
			errs := flatten(err)
			var got []string
			for _, e := range errs {
				var ce *hw.ConfigError
				if !errors.As(e, &ce) {
					t.Fatalf("%v is a %T, want *hw.ConfigError", e, e)
				}
				if ce.File != "agent.yaml" || ce.Line == 0 || ce.Msg == "" {
					t.Errorf("incomplete error %+v", ce)
				}
				if !strings.HasPrefix(e.Error(), "agent.yaml:") {
					t.Errorf("%q does not start with file:line", e)
				}
				got = append(got, strings.TrimSpace(fmt.Sprintf("%d %s", ce.Line, ce.Field)))
			}
			if strings.Join(got, ", ") != strings.Join(trim(tt.want), ", ") {
				t.Errorf("errors at\n  %s\nwant\n  %s\nfull:\n%v", strings.Join(got, ", "), strings.Join(tt.want, ", "), err)
			}
		})
	}
}

func trim(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = strings.TrimSpace(v)
	}
	return out
}

// TestLoadConfigFlagsWinOverFile keeps the documented precedence: file,
// then environment, then flags.
func TestLoadConfigFlagsWinOverFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/agent.yaml"
	os.WriteFile(path, []byte("relay: ws://file\ntoken: t\ncredits: 2\nlog_level: warn\n"), 0o644)
	env := map[string]string{"TETHER_RELAY": "ws://env"}
	cfg, err := loadConfig([]string{"--config", path, "--credits", "4"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Relay != "ws://env" || cfg.Credits != 4 || cfg.LogLevel != "warn" {
		t.Errorf("got relay %q credits %d level %q", cfg.Relay, cfg.Credits, cfg.LogLevel)
	}
}

// TestLoadConfigTokenPrecedence: of the token's sources, --token wins,
// then --token-file, then TETHER_TOKEN, then the file's token_file and
// token.
func TestLoadConfigTokenPrecedence(t *testing.T) {
	dir := t.TempDir()
	for name, tok := range map[string]string{"flag.token": "from-flag-file", "file.token": "from-file-file"} {
		if err := os.WriteFile(dir+"/"+name, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	withFileToken := dir + "/token.yaml"
	os.WriteFile(withFileToken, []byte("relay: ws://127.0.0.1:9\ntoken: from-file\n"), 0o644)
	withTokenFile := dir + "/token_file.yaml"
	os.WriteFile(withTokenFile, []byte("relay: ws://127.0.0.1:9\ntoken_file: "+dir+"/file.token\n"), 0o644)

	for _, tc := range []struct {
		name     string
		args     []string
		env      string // TETHER_TOKEN
		want     string
		fromFile bool // rotation writes the token back to its file
	}{
		{"token-file flag over env", []string{"--config", withFileToken, "--token-file", dir + "/flag.token"}, "from-env", "from-flag-file", true},
		{"token flag over token-file flag", []string{"--config", withFileToken, "--token", "from-flag", "--token-file", dir + "/flag.token"}, "from-env", "from-flag", false},
		{"token flag over env", []string{"--config", withFileToken, "--token", "from-flag"}, "from-env", "from-flag", false},
		{"env over file's token_file", []string{"--config", withTokenFile}, "from-env", "from-env", false},
		{"env over file's token", []string{"--config", withFileToken}, "from-env", "from-env", false},
		{"file's token_file", []string{"--config", withTokenFile}, "", "from-file-file", true},
		{"token-file flag over file's token", []string{"--config", withFileToken, "--token-file", dir + "/flag.token"}, "", "from-flag-file", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"TETHER_TOKEN": tc.env}
			cfg, err := loadConfig(tc.args, func(k string) string { return env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if cfg.token != tc.want || cfg.tokenInFile != tc.fromFile {
				t.Errorf("token %q (in file %v), want %q (in file %v)", cfg.token, cfg.tokenInFile, tc.want, tc.fromFile)
			}
		})
	}
}
