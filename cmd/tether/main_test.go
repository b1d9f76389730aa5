package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	getenv := func(string) string { return "" }
	code := run(context.Background(), args, &out, &errOut, getenv)
	return code, out.String(), errOut.String()
}

// Usage errors never reach the network: the relay here does not exist.
func TestUsageErrorsExit2(t *testing.T) {
	tests := [][]string{
		{},
		{"frobnicate"},
		{"--relay", "ftp://x", "devices"},
		{"--relay", "http://127.0.0.1:1", "call", "pi-1"},
		{"--relay", "http://127.0.0.1:1", "call", "pi-1", "gpio.read", "novalue"},
		{"--relay", "http://127.0.0.1:1", "call", "pi-1", "m", "--params", "[1]"},
		{"--relay", "http://127.0.0.1:1", "get"},
		{"--relay", "http://127.0.0.1:1", "cancel", "a", "b"},
		{"--relay", "http://127.0.0.1:1", "watch"},
		{"--nope"},
	}
	for _, args := range tests {
		code, _, stderr := runCLI(args...)
		if code != 2 || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"--version"},
		{"devices", "--help"}, {"call", "-h"}, {"call", "pi-1", "sys.ping", "--help"},
		{"get", "--help"}, {"cancel", "--help"}, {"watch", "--help"}} {
		code, out, _ := runCLI(args...)
		if code != 0 || out == "" {
			t.Errorf("%q: exit %d out %q", args, code, out)
		}
	}
}

func TestConnectionErrorExit2(t *testing.T) {
	code, _, stderr := runCLI("--relay", "http://127.0.0.1:1", "devices")
	if code != 2 || !strings.Contains(stderr, "cannot reach relay") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func TestParseParams(t *testing.T) {
	tests := []struct {
		words []string
		raw   string
		want  string
	}{
		{nil, "", ""},
		{[]string{"pin=GPIO17", "level=high"}, "", `{"level":"high","pin":"GPIO17"}`},
		{[]string{"bus=1", "addr=0x48", "read:=2", "write=10"}, "", `{"addr":"0x48","bus":"1","read":2,"write":"10"}`},
		{[]string{"addr:=0x48", "on:=true", `obj:={"a":1}`, "n:=1.5"}, "", `{"addr":72,"n":1.5,"obj":{"a":1},"on":true}`},
		{[]string{"empty=", "eq=a=b"}, "", `{"empty":"","eq":"a=b"}`},
		{[]string{"level=low"}, `{"pin":"GPIO17","level":"high"}`, `{"level":"low","pin":"GPIO17"}`},
	}
	for _, tt := range tests {
		got, err := buildParams(tt.raw, tt.words)
		if err != nil || string(got) != tt.want {
			t.Errorf("%q %q: %s, %v; want %s", tt.raw, tt.words, got, err, tt.want)
		}
	}
	for _, bad := range [][]string{{"=x"}, {":=1"}, {"novalue"}, {"addr:=0xZZ"}, {"x:=notjson"}} {
		if _, err := parseParams(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://h:8080":        "http://h:8080",
		"http://h:8080/":       "http://h:8080",
		"ws://h:8080":          "http://h:8080",
		"wss://relay.example/": "https://relay.example",
		"https://x/prefix/":    "https://x/prefix",
	} {
		got, err := baseURL(in)
		if err != nil || got != want {
			t.Errorf("baseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
		c := &client{base: got}
		if ws := c.wsURL(); !strings.HasPrefix(ws, "ws") || !strings.HasSuffix(ws, "/v1/client") {
			t.Errorf("wsURL of %q = %q", got, ws)
		}
	}
	for _, bad := range []string{"h:8080", "ftp://h", "http://", "http://h?key=x"} {
		if _, err := baseURL(bad); err == nil {
			t.Errorf("baseURL(%q) accepted", bad)
		}
	}
}

// A relay refusing a CLI that sent no key is told apart from a wrong key:
// only the first is told where a key comes from.
func TestNoKeyHint(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":{"code":"unauthorized","message":"missing or invalid client key"}}`))
	}))
	defer srv.Close()
	const hint = "set --key or TETHER_KEY"
	code, _, stderr := runCLI("--relay", srv.URL, "devices")
	if code != 2 || !strings.Contains(stderr, "401") || !strings.Contains(stderr, hint) {
		t.Errorf("no key: exit %d, stderr %q; want 2, the 401 and %q", code, stderr, hint)
	}
	code, _, stderr = runCLI("--relay", srv.URL, "--key", "tck_wrong", "devices")
	if code != 2 || strings.Contains(stderr, hint) {
		t.Errorf("wrong key: exit %d, stderr %q; want 2 without the hint", code, stderr)
	}
}
