package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/protocol"
)

// liveDevice is a relay with device "pi-1" served by an in-process agent
// on the simulated board, its GPIO27 edges flowing as events the way
// tether-agent wires them, and device "pi-2" registered but never online.
type liveDevice struct {
	relay *testRelay
	api   *api
	key   string
	agent *testAgent
}

func startLiveDevice(t *testing.T) *liveDevice {
	t.Helper()
	dir := t.TempDir()
	tok := addDevice(t, dir, "pi-1")
	addDevice(t, dir, "pi-2")
	key := addClient(t, dir, "cli")
	r := startRelay(t, dir, "", nil)
	c := &api{t: t, base: r.url(), key: key}

	b, err := mock.New(mock.Options{Version: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := agentConfig(r.wsURL(), tok)
	cfg.Logger = testLogger(t)
	a, err := agent.New(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		b.Run(ctx, func(name string, data json.RawMessage) { a.Emit(name, data) })
	}()
	var once sync.Once
	ta := &testAgent{a: a, stop: func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			a.Close()
			b.Close()
		})
	}}
	t.Cleanup(ta.stop)
	eventually(t, 5*time.Second, "pi-1 online", func() bool { return c.device("pi-1").Online })
	return &liveDevice{relay: r, api: c, key: key, agent: ta}
}

// tether runs the CLI binary against the relay: the URL as a flag, the
// key from the environment, as a script would.
func (d *liveDevice) tether(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "tether"), append([]string{"--relay", d.relay.url()}, args...)...)
	cmd.Env = append(os.Environ(), "TETHER_KEY="+d.key, "TETHER_RELAY=")
	return runCmd(t, cmd)
}

// runCmd runs cmd and returns its exit code and output. A command that
// could not run at all fails the test.
func runCmd(t *testing.T, cmd *exec.Cmd) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if code = exitCode(err); code < 0 {
		t.Fatalf("%s %q: %v", cmd.Path, cmd.Args[1:], err)
	}
	return code, out.String(), errOut.String()
}

func (d *liveDevice) want(t *testing.T, wantCode int, args ...string) (string, string) {
	t.Helper()
	code, out, errOut := d.tether(t, args...)
	if code != wantCode {
		t.Fatalf("tether %q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, wantCode, out, errOut)
	}
	return out, errOut
}

func TestCLIDevices(t *testing.T) {
	d := startLiveDevice(t)
	out, _ := d.want(t, 0, "devices")
	if !regexpLine(out, "pi-1", "online") || !regexpLine(out, "pi-2", "offline") {
		t.Fatalf("devices:\n%s", out)
	}
	out, _ = d.want(t, 0, "devices", "--json")
	var list struct{ Devices []protocol.DeviceInfo }
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Devices) != 2 {
		t.Fatalf("devices --json: %v\n%s", err, out)
	}

	// A wrong key and an unreachable relay are connection errors.
	cmd := exec.Command(filepath.Join(binaries(t), "tether"), "--relay", d.relay.url(), "--key", "tck_wrong", "devices")
	if err := cmd.Run(); exitCode(err) != 2 {
		t.Fatalf("wrong key: %v", err)
	}
	cmd = exec.Command(filepath.Join(binaries(t), "tether"), "devices")
	cmd.Env = append(os.Environ(), "TETHER_RELAY=http://"+freeAddr(t), "TETHER_KEY="+d.key)
	if err := cmd.Run(); exitCode(err) != 2 {
		t.Fatalf("unreachable relay: %v", err)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// regexpLine reports whether one line of out contains every word.
func regexpLine(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return true
		}
	}
	return false
}

func TestCLICall(t *testing.T) {
	d := startLiveDevice(t)
	out, _ := d.want(t, 0, "call", "pi-1", "sys.ping", "hello=pi", "n:=3")
	if !strings.Contains(out, `"hello": "pi"`) || !strings.Contains(out, `"n": 3`) {
		t.Fatalf("ping printed %s", out)
	}
	d.want(t, 0, "call", "pi-1", "gpio.write", "pin=GPIO17", "level=high")
	out, _ = d.want(t, 0, "call", "pi-1", "gpio.read", "pin=GPIO27", "--json")
	var rec protocol.Record
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.State != protocol.StateSucceeded || !strings.Contains(string(rec.Result), "high") {
		t.Fatalf("gpio.read --json: %v\n%s", err, out)
	}
	out, _ = d.want(t, 0, "call", "pi-1", "i2c.tx", "bus=1", "addr=0x48", "write=00", "read:=2")
	if !strings.Contains(out, `"read": "`) {
		t.Fatalf("i2c.tx printed %s", out)
	}
	d.want(t, 0, "call", "--params", `{"pin":"GPIO17"}`, "pi-1", "gpio.write", "level=low", "--timeout", "5s", "--idempotent")

	// Failed requests exit 1 and say why.
	_, errOut := d.want(t, 1, "call", "pi-1", "gpio.read", "pin=GPIO99")
	if !strings.Contains(errOut, "failed") || !strings.Contains(errOut, protocol.CodeNotFound) {
		t.Fatalf("stderr %s", errOut)
	}
	_, errOut = d.want(t, 1, "call", "pi-1", "no.such")
	if !strings.Contains(errOut, protocol.CodeUnknownMethod) {
		t.Fatalf("stderr %s", errOut)
	}
	out, _ = d.want(t, 1, "call", "--json", "pi-1", "gpio.write", "pin=GPIO99", "level=high")
	if json.Unmarshal([]byte(out), &rec) != nil || rec.State != protocol.StateFailed {
		t.Fatalf("failed call --json printed %s", out)
	}
	// A request nobody picks up before its timeout expires: exit 1.
	_, errOut = d.want(t, 1, "call", "pi-2", "sys.ping", "--timeout", "100ms")
	if !strings.Contains(errOut, protocol.StateExpired) {
		t.Fatalf("stderr %s", errOut)
	}
	// Refusals before a request exists are usage errors: exit 2.
	d.want(t, 2, "call", "nodevice", "sys.ping")
	d.want(t, 2, "call", "pi-1", "bad method")
	d.want(t, 2, "call", "pi-1")
}

func TestCLIAsyncGetCancel(t *testing.T) {
	d := startLiveDevice(t)
	out, _ := d.want(t, 0, "call", "--async", "pi-1", "sys.ping", "x:=1")
	id := strings.TrimSpace(out)
	if !protocol.ValidID(id) {
		t.Fatalf("--async printed %q", out)
	}
	out, _ = d.want(t, 0, "get", id, "--wait", "5s")
	if !strings.Contains(out, `"x": 1`) {
		t.Fatalf("get printed %s", out)
	}
	out, _ = d.want(t, 0, "get", "--json", id)
	var rec protocol.Record
	if json.Unmarshal([]byte(out), &rec) != nil || rec.ID != id || rec.State != protocol.StateSucceeded {
		t.Fatalf("get --json printed %s", out)
	}

	// pi-2 is offline: its request waits in the queue to be canceled.
	out, _ = d.want(t, 0, "call", "pi-2", "sys.ping", "--async")
	queued := strings.TrimSpace(out)
	out, _ = d.want(t, 0, "get", queued) // live: exit 0, state printed
	if !strings.Contains(out, protocol.StateQueued) {
		t.Fatalf("get of a queued request printed %s", out)
	}
	out, _ = d.want(t, 0, "cancel", queued)
	if !strings.Contains(out, protocol.StateCanceled) {
		t.Fatalf("cancel printed %s", out)
	}
	d.want(t, 1, "get", queued)    // canceled: exit 1
	d.want(t, 1, "cancel", queued) // already finished: exit 1
	d.want(t, 1, "cancel", id)     // succeeded before: exit 1
	d.want(t, 2, "get", "r_nonexistent")
	d.want(t, 2, "cancel", "r_nonexistent")
}

// lineReader collects a process's stdout lines for waiting on.
type lineReader struct {
	lines chan string
	done  chan struct{}
}

func readLines(r io.Reader) *lineReader {
	lr := &lineReader{lines: make(chan string, 4096), done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lr.lines <- sc.Text()
		}
	}()
	return lr
}

func (lr *lineReader) waitFor(t *testing.T, words ...string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-lr.lines:
			if regexpLine(l, words...) {
				return l
			}
		case <-lr.done:
			t.Fatalf("output ended before a line with %q", words)
		case <-timeout:
			t.Fatalf("no line with %q", words)
		}
	}
}

func TestCLIWatch(t *testing.T) {
	d := startLiveDevice(t)
	cmd := exec.Command(filepath.Join(binaries(t), "tether"), "--relay", d.relay.wsURL(), "watch", "pi-1")
	cmd.Env = append(os.Environ(), "TETHER_KEY="+d.key)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed once waitErr is set
	var waitErr error
	lines := readLines(stdout)
	go func() {
		<-lines.done // Wait closes the pipe: read it to the end first
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("watch stderr:\n%s", errOut.String())
		}
	})

	lines.waitFor(t, "presence", "pi-1", "online")
	d.api.call("pi-1", "gpio.write", map[string]any{"pin": "GPIO17", "level": "high"})
	l := lines.waitFor(t, "event", "pi-1", "gpio.edge")
	if !strings.Contains(l, `"pin":"GPIO27"`) || !strings.Contains(l, "rising") {
		t.Fatalf("event line %q", l)
	}
	d.agent.stop()
	lines.waitFor(t, "presence", "pi-1", "offline")

	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("watch ended with %v, want exit 0", waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop on SIGINT")
	}

	// An unknown device ends watch with exit 2.
	_, errMsg := d.want(t, 2, "watch", "nodevice")
	if !strings.Contains(errMsg, "unknown device") {
		t.Fatalf("stderr %s", errMsg)
	}
}
