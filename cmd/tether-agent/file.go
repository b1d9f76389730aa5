package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/hw"
	yaml "github.com/tetherhq/tether/internal/yamlite"
	"github.com/tetherhq/tether/protocol"
)

// fileKey is one of the agent's own top-level keys in the config file.
// set decodes and checks the value; its error becomes a *hw.ConfigError
// placed at the value's line.
type fileKey struct {
	name string
	set  func(c *config, n *yaml.Node) error
}

// fileKeys are the agent's keys, in the order the docs list them. The
// hardware keys (gpio, i2c, spi, pwm) belong to package hw.
var fileKeys = []fileKey{
	{"relay", func(c *config, n *yaml.Node) error {
		s, err := scalarString(n)
		if err != nil {
			return err
		}
		if err := checkRelayURL(s); err != nil {
			return err
		}
		c.Relay = s
		return nil
	}},
	{"token", stringKey(func(c *config) *string { return &c.Token })},
	{"token_file", stringKey(func(c *config) *string { return &c.TokenFile })},
	{"board", oneOfKey(func(c *config) *string { return &c.Board }, "periph", "mock")},
	{"state", stringKey(func(c *config) *string { return &c.State })},
	{"credits", func(c *config, n *yaml.Node) error {
		var v int
		if n.Kind != yaml.ScalarNode || n.Decode(&v) != nil {
			return fmt.Errorf("want an integer, got %s", describe(n))
		}
		if v < 1 || v > protocol.MaxPull {
			return fmt.Errorf("want 1 to %d, got %d", protocol.MaxPull, v)
		}
		c.Credits = v
		return nil
	}},
	{"ping_period", durationKey(func(c *config) *time.Duration { return &c.PingPeriod })},
	{"backoff_max", durationKey(func(c *config) *time.Duration { return &c.BackoffMax })},
	{"log_format", oneOfKey(func(c *config) *string { return &c.LogFormat }, "text", "json")},
	{"log_level", func(c *config, n *yaml.Node) error {
		s, err := scalarString(n)
		if err != nil {
			return err
		}
		var lv slog.Level
		if lv.UnmarshalText([]byte(s)) != nil {
			return fmt.Errorf("want debug, info, warn or error, got %q", s)
		}
		c.LogLevel = s
		return nil
	}},
	{"status_addr", func(c *config, n *yaml.Node) error {
		s, err := scalarString(n)
		if err != nil {
			return err
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("want host:port like 127.0.0.1:9101, got %q", s)
		}
		c.StatusAddr = s
		return nil
	}},
}

// hwKeys are the top-level keys hw.ConfigFromNode reads.
var hwKeys = []string{"gpio", "i2c", "spi", "pwm"}

// parseFile reads the agent's settings and the hardware section from one
// YAML document into c. Every problem is reported, each as a
// *hw.ConfigError naming the file, line and field; keys nobody knows are
// errors too, so a typo never falls back to a default silently.
func parseFile(file string, data []byte, c *config) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return syntaxError(file, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil // empty file: nothing set
		}
		root = root.Content[0]
	}
	if root.Kind == 0 || (root.Kind == yaml.ScalarNode && root.Tag == "!!null") {
		return nil // empty, or only comments
	}
	if root.Kind != yaml.MappingNode {
		return &hw.ConfigError{File: file, Line: root.Line, Msg: "want a mapping of keys at the top level"}
	}

	var errs []error
	fail := func(line int, field, format string, args ...any) {
		errs = append(errs, &hw.ConfigError{File: file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, val := root.Content[i], root.Content[i+1]
		if first, ok := seen[key.Value]; ok {
			fail(key.Line, key.Value, "repeated key (first set on line %d)", first)
			continue
		}
		seen[key.Value] = key.Line
		if slices.Contains(hwKeys, key.Value) {
			continue
		}
		k := lookupKey(key.Value)
		if k == nil {
			fail(key.Line, key.Value, "unknown key (agent keys: %s; hardware keys: %s)", keyNames(), strings.Join(hwKeys, ", "))
			continue
		}
		if val.Kind == yaml.ScalarNode && val.Tag == "!!null" {
			continue // "relay:" with no value leaves the setting unset
		}
		if err := k.set(c, val); err != nil {
			fail(val.Line, key.Value, "%v", err)
		}
	}

	hcfg, err := hw.ConfigFromNode(file, &doc)
	errs = append(errs, flatten(err)...)
	if len(errs) > 0 {
		sort.Stable(byLine(errs))
		return errors.Join(errs...)
	}
	c.Hardware = hcfg
	return nil
}

func lookupKey(name string) *fileKey {
	for i := range fileKeys {
		if fileKeys[i].name == name {
			return &fileKeys[i]
		}
	}
	return nil
}

func keyNames() string {
	names := make([]string, len(fileKeys))
	for i, k := range fileKeys {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

func stringKey(field func(*config) *string) func(*config, *yaml.Node) error {
	return func(c *config, n *yaml.Node) error {
		s, err := scalarString(n)
		if err != nil {
			return err
		}
		*field(c) = s
		return nil
	}
}

func durationKey(field func(*config) *time.Duration) func(*config, *yaml.Node) error {
	return func(c *config, n *yaml.Node) error {
		var v time.Duration
		if n.Kind != yaml.ScalarNode || n.Decode(&v) != nil {
			return fmt.Errorf("want a duration like 20s, got %s", describe(n))
		}
		if v <= 0 {
			return fmt.Errorf("want a positive duration, got %s", v)
		}
		*field(c) = v
		return nil
	}
}

func oneOfKey(field func(*config) *string, want ...string) func(*config, *yaml.Node) error {
	return func(c *config, n *yaml.Node) error {
		s, err := scalarString(n)
		if err != nil {
			return err
		}
		if !slices.Contains(want, s) {
			return fmt.Errorf("want %s, got %q", strings.Join(want, " or "), s)
		}
		*field(c) = s
		return nil
	}
}

func scalarString(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("want a string, got %s", describe(n))
	}
	return n.Value, nil
}

// describe names what a node holds, for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return strconv.Quote(n.Value)
}

// checkRelayURL accepts what agent.New accepts: a ws:// or wss:// URL.
func checkRelayURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("want a ws:// or wss:// URL like wss://relay.example.com, got %q", s)
	}
	return nil
}

// syntaxError places a YAML syntax error at its line.
func syntaxError(file string, err error) error {
	var se *yaml.SyntaxError
	if errors.As(err, &se) {
		return &hw.ConfigError{File: file, Line: se.Line, Msg: "invalid YAML: " + se.Msg}
	}
	return &hw.ConfigError{File: file, Msg: "invalid YAML: " + err.Error()}
}

// flatten turns an errors.Join tree into its leaves.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// byLine orders errors by the line they are placed at. sort.Stable and not
// slices.SortStableFunc: sort's code is in the binary already, while
// slices.SortStableFunc on errors would add 2.7 KB on a Pi Zero.
type byLine []error

func (e byLine) Len() int           { return len(e) }
func (e byLine) Less(i, j int) bool { return errLine(e[i]) < errLine(e[j]) }
func (e byLine) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }

func errLine(err error) int {
	var ce *hw.ConfigError
	if errors.As(err, &ce) {
		return ce.Line
	}
	return 0
}
