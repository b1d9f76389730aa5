package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runCheck runs "tether-agent check ARGS" and returns its exit code and
// output.
func runCheck(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), "tether-agent"), append([]string{"check"}, args...)...)
	cmd.Env = append(os.Environ(), "TETHER_RELAY=", "TETHER_TOKEN=")
	return runCmd(t, cmd)
}

func writeFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckGoodConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/token", "tdv_secret\n")
	cfg := writeFile(t, dir+"/agent.yaml", `# a mock board
relay: ws://127.0.0.1:9
token_file: `+dir+`/token
board: mock
state: `+dir+`/state
credits: 2
ping_period: 20s
log_format: json
`)
	code, out, errOut := runCheck(t, "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{cfg + ": valid", "ws://127.0.0.1:9", "from " + dir + "/token", "will be created",
		"sys.ping", "GPIO17", "SPI0.0", "available", "\nok\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "UNAVAILABLE") || strings.Contains(out, "tdv_secret") {
		t.Errorf("unexpected output:\n%s", out)
	}
}

func TestCheckBadConfigNamesLineAndField(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir+"/agent.yaml", `relay: http://relay.example.com
token: abc
board: mock
credits: lots
ping_period: soon
log_format: xml
verbose: true
i2c:
  - name: sensors
    bus: "1"
    addresses: [0x48, 0x99]
spi:
  - name: adc
    port: SPI0.0
    mode: 7
`)
	code, out, errOut := runCheck(t, "--config", cfg)
	if code == 0 {
		t.Fatalf("exit 0 for a bad config\nstdout:\n%s", out)
	}
	want := []string{
		"agent.yaml:1: relay: ",
		"agent.yaml:4: credits: ",
		"agent.yaml:5: ping_period: ",
		"agent.yaml:6: log_format: ",
		"agent.yaml:7: verbose: unknown key",
		"agent.yaml:11: i2c[0].addresses: ",
		"agent.yaml:15: spi[0].mode: ",
	}
	lines := regexp.MustCompile(`(?m)^.*agent\.yaml:\d+: .*$`).FindAllString(errOut, -1)
	if len(lines) != len(want) {
		t.Fatalf("got %d error lines, want %d:\n%s", len(lines), len(want), errOut)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("error %d is %q, want it to contain %q", i, lines[i], w)
		}
	}
}

func TestCheckMissingRelayAndToken(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir+"/agent.yaml", "board: mock\n")
	code, _, errOut := runCheck(t, "--config", cfg)
	if code == 0 || !strings.Contains(errOut, "no relay") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	code, _, errOut = runCheck(t, "--config", cfg, "--relay", "ws://127.0.0.1:9", "--token-file", dir+"/missing")
	if code == 0 || !strings.Contains(errOut, "token file") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}

// TestCheckShippedConfigs: the packaged default config parses; it only
// lacks the relay the operator has to fill in.
func TestCheckShippedConfigs(t *testing.T) {
	code, _, errOut := runCheck(t, "--config", "../deploy/packaging/agent.yaml", "--board", "mock")
	if code == 0 || !strings.Contains(errOut, "no relay") || strings.Contains(errOut, "agent.yaml:") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}

// TestAgentStatusAddr runs the agent binary with --status-addr against a
// relay and reads its local status, then stops it with SIGTERM.
func TestAgentStatusAddr(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	r := startRelay(t, t.TempDir(), "", nil)
	tok := addDevice(t, r.dir, "pi-status")
	addr := freeAddr(t)
	p := startProc(t, "tether-agent", "--relay", r.wsURL(), "--token", tok, "--board", "mock",
		"--state", t.TempDir(), "--status-addr", addr, "--log-format", "json")

	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	var st struct {
		Version   string  `json:"version"`
		Board     string  `json:"board"`
		Connected bool    `json:"connected"`
		Outbox    int     `json:"outbox"`
		Uptime    float64 `json:"uptime_seconds"`
	}
	eventually(t, 15*time.Second, "status connected", func() bool {
		resp, err := client.Get("http://" + addr + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&st) == nil && st.Connected
	})
	if st.Board != "mock" || st.Version == "" {
		t.Errorf("status %+v", st)
	}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
	client.CloseIdleConnections()

	p.cmd.Process.Signal(syscall.SIGTERM)
	err, done := p.wait(15 * time.Second)
	if !done {
		t.Fatal("agent did not stop on SIGTERM")
	}
	if err != nil {
		t.Fatalf("agent exit: %v\n%s", err, p.output())
	}
	if !strings.Contains(p.output(), `"msg":"status server listening"`) {
		t.Errorf("no JSON log line for the status server:\n%s", p.output())
	}
	if resp, err := client.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("status server still answers after the agent stopped")
	}
}
