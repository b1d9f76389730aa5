package main

import (
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// historyPin records every level driven on it.
type historyPin struct {
	gpiotest.Pin
	mu   sync.Mutex
	outs []gpio.Level
}

func (p *historyPin) Out(l gpio.Level) error {
	p.mu.Lock()
	p.outs = append(p.outs, l)
	p.mu.Unlock()
	return p.Pin.Out(l)
}

func (p *historyPin) history() []gpio.Level {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]gpio.Level(nil), p.outs...)
}

// An output is driven to its initial level once when the agent starts,
// and to its safe level when it stops (deploy/agent.example.yaml). With
// initial: high and safe: low it must not glitch low at start, nor sit at
// its safe level while the agent runs.
func TestAgentDrivesInitialAtStartAndSafeAtStop(t *testing.T) {
	pin := &historyPin{Pin: gpiotest.Pin{N: "TEST_INITIAL_SAFE", Num: 2017}}
	gpioreg.Unregister(pin.Name()) // -count > 1
	if err := gpioreg.Register(pin); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	yaml := "relay: ws://127.0.0.1:9\nboard: periph\nstatus_addr: " + addr + "\nlog_level: error\n" +
		"gpio:\n  - name: door\n    pin: TEST_INITIAL_SAFE\n    direction: out\n    initial: high\n    safe: low\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TETHER_TOKEN", "tdv_x")

	// Our own registration keeps SIGINT from killing the test binary
	// before run has registered its handler.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT)
	defer signal.Stop(sig)

	done := make(chan error, 1)
	go func() { done <- run([]string{"--config", file}) }()
	// The status server starts after the board is open: from then on the
	// agent is running.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	running := pin.Pin.Read()
	startHistory := pin.history()

	for stopped := false; !stopped; {
		syscall.Kill(os.Getpid(), syscall.SIGINT)
		select {
		case err := <-done:
			if err != nil {
				t.Logf("run: %v", err)
			}
			stopped = true
		case <-time.After(100 * time.Millisecond):
		}
	}

	if running != gpio.High {
		t.Errorf("while the agent runs the output is %v, want its initial level High (outputs driven at start: %v)", running, startHistory)
	}
	if len(startHistory) != 1 {
		t.Errorf("at start the output was driven %v: a glitch, want just [High]", startHistory)
	}
	if got := pin.Pin.Read(); got != gpio.Low {
		t.Errorf("after the agent stopped the output is %v, want its safe level Low (driven: %v)", got, pin.history())
	}
}
