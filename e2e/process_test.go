package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherhq/tether/protocol"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the three commands once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tether-e2e-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "../cmd/tether-relay", "../cmd/tether-agent", "../cmd/tether")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func cleanupBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a started binary whose stderr is kept for failure reports.
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), name), args...)
	var out bytes.Buffer
	sw := &syncWriter{w: &out}
	cmd.Stdout, cmd.Stderr = sw, sw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: &out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

type syncWriter struct {
	mu sync.Mutex
	w  interface {
		Write([]byte) (int, error)
		String() string
	}
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (p *proc) output() string {
	if sw, ok := p.cmd.Stderr.(*syncWriter); ok {
		sw.mu.Lock()
		defer sw.mu.Unlock()
	}
	return p.out.String()
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

func (p *proc) wait(d time.Duration) (error, bool) {
	select {
	case err := <-p.done:
		p.done <- err
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// admin runs a tether-relay admin command and returns the secret it
// prints on its last line.
func admin(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binaries(t), "tether-relay"), args...).Output()
	if err != nil {
		t.Fatalf("tether-relay %v: %v", args, err)
	}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

func startRelayProc(t *testing.T, dir, addr string) *proc {
	t.Helper()
	p := startProc(t, "tether-relay", "serve", "--listen", addr, "--data", dir)
	c := &api{t: t, base: "http://" + addr}
	eventually(t, 10*time.Second, "relay healthz", func() bool {
		req, _ := c.client().Get(c.base + "/healthz")
		if req != nil {
			req.Body.Close()
			return req.StatusCode == 200
		}
		return false
	})
	return p
}

func TestProcessesRelayKilledAndRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	tok := admin(t, "device", "add", "pi-1", "--data", dir)
	key := admin(t, "client", "add", "app", "--data", dir)
	relayProc := startRelayProc(t, dir, addr)
	c := &api{t: t, base: "http://" + addr, key: key}

	startProc(t, "tether-agent", "--relay", "ws://"+addr, "--token", tok, "--board", "mock",
		"--state", t.TempDir(), "--mock-delay", "200ms")
	eventually(t, 10*time.Second, "agent online", func() bool { return c.device("pi-1").Online })
	wantState(t, c.call("pi-1", "sys.ping", "hi"), protocol.StateSucceeded, "")

	var ids []string
	for i := 0; i < 6; i++ {
		_, rec := c.submit("pi-1", "sys.ping", i, "")
		ids = append(ids, rec.ID)
	}
	relayProc.cmd.Process.Signal(syscall.SIGKILL)
	relayProc.wait(10 * time.Second)
	startRelayProc(t, dir, addr)
	for _, id := range ids {
		wantState(t, c.wait(id, 30*time.Second), protocol.StateSucceeded, "")
	}
	eventually(t, 30*time.Second, "agent reconnected by itself", func() bool { return c.device("pi-1").Online })
}

func TestProcessesAgentKilledMidRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	tok := admin(t, "device", "add", "pi-1", "--data", dir)
	key := admin(t, "client", "add", "app", "--data", dir)
	startRelayProc(t, dir, addr)
	c := &api{t: t, base: "http://" + addr, key: key}
	state := t.TempDir()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	args := []string{"--relay", "ws://" + addr, "--token", tok, "--board", "mock", "--state", state,
		"--mock-exec-log", execLog, "--credits", "2"}
	agentProc := startProc(t, "tether-agent", args...)
	eventually(t, 10*time.Second, "agent online", func() bool { return c.device("pi-1").Online })

	_, rec := c.submit("pi-1", "gpio.pulse", map[string]any{"pin": "GPIO5", "level": "high", "duration": "20s"}, "")
	// With a second worker slot, reading the pin shows the pulse has begun.
	eventually(t, 10*time.Second, "pulse started", func() bool {
		return strings.Contains(string(c.call("pi-1", "gpio.read", map[string]any{"pin": "GPIO5"}).Result), "high")
	})
	agentProc.cmd.Process.Signal(syscall.SIGKILL)
	agentProc.wait(10 * time.Second)

	// Restarted on the same journal, the agent reports the pulse it was
	// running as interrupted instead of pulsing again.
	agent2 := startProc(t, "tether-agent", args...)
	wantState(t, c.wait(rec.ID, 30*time.Second), protocol.StateFailed, protocol.CodeInterrupted)
	wantState(t, c.call("pi-1", "sys.ping", nil), protocol.StateSucceeded, "")
	data, _ := os.ReadFile(execLog)
	if n := strings.Count(string(data), rec.ID); n != 1 {
		t.Fatalf("pulse executed %d times", n)
	}

	// SIGTERM stops the agent cleanly and promptly.
	agent2.cmd.Process.Signal(syscall.SIGTERM)
	err, ok := agent2.wait(15 * time.Second)
	if !ok || err != nil {
		t.Fatalf("agent after SIGTERM: exited=%v err=%v", ok, err)
	}
	eventually(t, 10*time.Second, "offline", func() bool { return !c.device("pi-1").Online })
}

// A clean stop syncs the journal: the relay's ack of a finished request,
// which is only buffered when it arrives, is on disk after SIGTERM, so a
// restarted agent does not send the acknowledged result again.
func TestProcessesAgentCleanStopSyncsAcks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	r := startRelay(t, dir, "", nil)
	tok := addDevice(t, dir, "pi-1")
	c := &api{t: t, base: r.url(), key: addClient(t, dir, "app")}
	state := t.TempDir()
	agentProc := startProc(t, "tether-agent", "--relay", r.wsURL(), "--token", tok, "--board", "mock", "--state", state)
	eventually(t, 10*time.Second, "agent online", func() bool { return c.device("pi-1").Online })

	// gpio.write touches hardware, so its result and ack are journaled.
	rec := c.call("pi-1", "gpio.write", map[string]any{"pin": "GPIO17", "level": "high"})
	wantState(t, rec, protocol.StateSucceeded, "")

	// The agent waits for the ack of every result before it stops.
	agentProc.cmd.Process.Signal(syscall.SIGTERM)
	if err, ok := agentProc.wait(15 * time.Second); !ok || err != nil {
		t.Fatalf("agent after SIGTERM: exited=%v err=%v", ok, err)
	}
	data, err := os.ReadFile(filepath.Join(state, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	if ack := `{"op":"ack","id":"` + rec.ID + `"}`; !bytes.Contains(data, []byte(ack)) {
		t.Fatalf("journal after a clean stop lacks %s", ack)
	}
}

// A relay whose disk is lost comes back from a copy taken while it
// served: the agent reconnects with its token from the copy, every
// request the copy holds finishes, and none that had run already runs
// again (the agent answers those from its journal).
func TestProcessesRelayRestoredFromBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	tok := admin(t, "device", "add", "pi-1", "--data", dir)
	key := admin(t, "client", "add", "app", "--data", dir)
	relayProc := startRelayProc(t, dir, addr)
	c := &api{t: t, base: "http://" + addr, key: key}
	execLog := filepath.Join(t.TempDir(), "exec.log")
	startProc(t, "tether-agent", "--relay", "ws://"+addr, "--token", tok, "--board", "mock",
		"--state", t.TempDir(), "--mock-exec-log", execLog, "--mock-delay", "150ms")
	eventually(t, 10*time.Second, "agent online", func() bool { return c.device("pi-1").Online })
	write := map[string]any{"pin": "GPIO17", "level": "high"}
	done := c.call("pi-1", "gpio.write", write)
	wantState(t, done, protocol.StateSucceeded, "")
	var ids []string
	for range 6 {
		_, rec := c.submit("pi-1", "gpio.write", write, "")
		ids = append(ids, rec.ID)
	}

	copyFile := filepath.Join(t.TempDir(), "relay.tar")
	out, err := exec.Command(filepath.Join(binaries(t), "tether-relay"), "backup", "--data", dir, "--out", copyFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "taken by the serving relay") {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	// Requests the copy holds as queued run before the disk is lost.
	eventually(t, 10*time.Second, "a queued request run", func() bool { return c.get(ids[1]).State == protocol.StateSucceeded })
	relayProc.cmd.Process.Signal(syscall.SIGKILL)
	relayProc.wait(10 * time.Second)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	restored := filepath.Join(t.TempDir(), "restored")
	out, err = exec.Command(filepath.Join(binaries(t), "tether-relay"), "restore", "--from", copyFile, "--data", restored).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "requests: 7") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	startRelayProc(t, restored, addr)
	if got := c.get(done.ID); got.State != protocol.StateSucceeded {
		t.Errorf("finished request restored as %s", got.State)
	}
	for _, id := range ids {
		wantState(t, c.wait(id, 30*time.Second), protocol.StateSucceeded, "")
	}
	data, err := os.ReadFile(execLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range append(ids, done.ID) {
		if n := strings.Count(string(data), id); n != 1 {
			t.Errorf("request %s executed %d times", id, n)
		}
	}
}
