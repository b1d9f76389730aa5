package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// TestEmulatedARM runs the cross-built agents under qemu-user-static
// against a native relay and drives every kind of peripheral through the
// relay API. `make e2e-arm` builds the agents and sets TETHER_E2E_ARM to
// their directory.
func TestEmulatedARM(t *testing.T) {
	dist := os.Getenv("TETHER_E2E_ARM")
	if dist == "" {
		t.Skip("TETHER_E2E_ARM not set: run `make e2e-arm`")
	}
	for _, tc := range []struct{ arch, qemu string }{
		{"armv6", "qemu-arm-static"},
		{"arm64", "qemu-aarch64-static"},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			qemu, err := exec.LookPath(tc.qemu)
			if err != nil {
				t.Fatalf("%s not installed (apt-get install qemu-user-static): %v", tc.qemu, err)
			}
			bin := filepath.Join(dist, "tether-agent-linux-"+tc.arch)
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("agent binary missing: %v", err)
			}
			dir := t.TempDir()
			tok := addDevice(t, dir, "pi-"+tc.arch)
			key := addClient(t, dir, "app")
			r := startRelay(t, dir, "", nil)
			c := &api{t: t, base: r.url(), key: key}
			dev := "pi-" + tc.arch

			execLog := filepath.Join(t.TempDir(), "exec.log")
			args := []string{"--relay", r.wsURL(), "--token", tok, "--board", "mock", "--state", t.TempDir(),
				"--mock-exec-log", execLog, "--credits", "2"}
			out := &syncWriter{w: new(strings.Builder)}
			var agent *exec.Cmd
			start := func() {
				agent = exec.Command(qemu, append([]string{bin}, args...)...)
				agent.Stdout, agent.Stderr = out, out
				if err := agent.Start(); err != nil {
					t.Fatal(err)
				}
			}
			start()
			defer func() {
				agent.Process.Kill()
				agent.Wait()
				if t.Failed() {
					t.Logf("agent output:\n%s", out.String())
				}
			}()
			eventually(t, 60*time.Second, dev+" online under emulation", func() bool { return c.device(dev).Online })

			info := c.call(dev, "sys.info", nil)
			wantState(t, info, protocol.StateSucceeded, "")

			// GPIO write/read through the 17→27 wire, and its edge event.
			wantState(t, c.call(dev, "gpio.write", map[string]any{"pin": "GPIO17", "level": "high"}), protocol.StateSucceeded, "")
			rd := c.call(dev, "gpio.read", map[string]any{"pin": "GPIO27"})
			wantState(t, rd, protocol.StateSucceeded, "")
			if !strings.Contains(string(rd.Result), `"high"`) {
				t.Fatalf("GPIO27 = %s after GPIO17 high", rd.Result)
			}
			var evs struct {
				Events []protocol.EventRecord `json:"events"`
			}
			eventually(t, 30*time.Second, "gpio.edge event", func() bool {
				_, data := c.do("GET", "/v1/devices/"+dev+"/events?after=0&wait=2s", nil)
				json.Unmarshal(data, &evs)
				for _, e := range evs.Events {
					if e.Name == "gpio.edge" && strings.Contains(string(e.Data), "GPIO27") && strings.Contains(string(e.Data), "rising") {
						return true
					}
				}
				return false
			})

			// I2C: the TMP102's temperature register.
			tmp := c.call(dev, "i2c.tx", map[string]any{"bus": "1", "addr": 0x48, "write": "00", "read": 2})
			wantState(t, tmp, protocol.StateSucceeded, "")
			var v struct{ Read string }
			json.Unmarshal(tmp.Result, &v)
			if len(v.Read) != 4 {
				t.Fatalf("TMP102 read %q", v.Read)
			}
			var raw int
			fmt.Sscanf(v.Read, "%x", &raw)
			if celsius := float64(raw>>4) * 0.0625; celsius < 15 || celsius > 35 {
				t.Fatalf("TMP102 says %.2f °C", celsius)
			}

			// SPI loopback.
			spi := c.call(dev, "spi.tx", map[string]any{"port": "SPI0.0", "write": "a55a0ff0"})
			wantState(t, spi, protocol.StateSucceeded, "")
			if !strings.Contains(string(spi.Result), "a55a0ff0") {
				t.Fatalf("SPI loopback returned %s", spi.Result)
			}

			// A bad request fails cleanly on the emulated board too.
			wantState(t, c.call(dev, "i2c.tx", map[string]any{"bus": "1", "addr": 0x20, "read": 1}), protocol.StateFailed, protocol.CodeNotPermitted)

			// Killed mid-pulse and restarted on the same journal (this
			// architecture's fdatasync and file offsets), the agent reports
			// the pulse interrupted instead of pulsing again.
			_, pulse := c.submit(dev, "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "20s"}, "")
			eventually(t, 30*time.Second, "pulse started", func() bool {
				return strings.Contains(string(c.call(dev, "gpio.read", map[string]any{"pin": "GPIO5"}).Result), "high")
			})
			agent.Process.Kill()
			agent.Wait()
			start()
			wantState(t, c.wait(pulse.ID, 60*time.Second), protocol.StateFailed, protocol.CodeInterrupted)
			if data, _ := os.ReadFile(execLog); strings.Count(string(data), pulse.ID) != 1 {
				t.Fatalf("pulse executed %d times", strings.Count(string(data), pulse.ID))
			}
		})
	}
}
