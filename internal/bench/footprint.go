package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// archMax is the stripped-size budget per agent architecture.
var archMax = map[string]float64{"armv6": 6 << 20}

// agentArches are the architectures of `make cross`.
var agentArches = []string{"armv6", "armv7", "arm64", "riscv64", "amd64"}

// agentBinary returns the stripped agent for this machine, building it
// the way `make cross` does when it is missing.
func (r *runner) agentBinary() (string, error) {
	if r.opts.AgentBin != "" {
		return r.opts.AgentBin, nil
	}
	p := filepath.Join(r.opts.Dist, "tether-agent-linux-"+runtime.GOARCH)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	p = filepath.Join(r.work, "tether-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-gcflags=all=-l", "-o", p, "./cmd/tether-agent")
	cmd.Dir = r.opts.ModuleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %v\n%s", err, out)
	}
	return p, nil
}

// footprint runs the real tether-agent binary on the simulated board with
// a journal against a relay process, and reads its memory, fsyncs and
// disk writes idle and through a burst of requests.
func (r *runner) footprint(ctx context.Context) error {
	bin, err := r.agentBinary()
	if err != nil {
		return err
	}
	r.binarySizes(bin)

	data, err := r.dir("relay-footprint")
	if err != nil {
		return err
	}
	tokens, key, err := makeDevices(data, 1)
	if err != nil {
		return err
	}
	toks, err := readTokens(tokens)
	if err != nil {
		return err
	}
	_, addr, err := r.startRelay(data, "127.0.0.1:0", 0)
	if err != nil {
		return err
	}
	state, err := r.dir("agent-state")
	if err != nil {
		return err
	}
	lf, err := os.Create(filepath.Join(r.work, "agent.log"))
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(bin, "--relay", "ws://"+addr, "--token", toks[0].token, "--board", "mock", "--state", state, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	pid := cmd.Process.Pid

	t := &tether{addr: addr, key: key, hc: newHTTPClient()}
	defer t.close()
	if err := t.waitOnline(1, 30*time.Second); err != nil {
		return err
	}
	time.Sleep(2 * settle)
	idleKB, err := procStatus(pid, "VmRSS")
	if err != nil {
		return err
	}
	r.add(&Figure{Name: "agent_rss_idle", Value: float64(idleKB * 1024), Unit: "B", Budget: "10 MiB", Max: 10 << 20,
		Note: "VmRSS of the stripped tether-agent (--board mock --state DIR), connected and idle"})

	w0, err := procIO(pid, "write_bytes")
	if err != nil {
		return err
	}
	strace, straceOut := r.attachStrace(pid)
	// A hardware action, so the journal is in the figures.
	call := t.restCallWith(gpioSubmit, func(int) string { return deviceID(0) })
	n := r.opts.Burst
	if _, _, err := drive(ctx, n, 32, call); err != nil {
		return fmt.Errorf("burst: %w", err)
	}
	hwmKB, err := procStatus(pid, "VmHWM")
	if err != nil {
		return err
	}
	w1, err := procIO(pid, "write_bytes")
	if err != nil {
		return err
	}
	r.add(&Figure{Name: "agent_rss_burst_hwm", Value: float64(hwmKB * 1024), Unit: "B", Budget: "16 MiB", Max: 16 << 20,
		Note: fmt.Sprintf("VmHWM of the agent after a burst of %d gpio.write requests submitted 32 at a time (the agent runs 1 at a time)", n)})
	r.add(&Figure{Name: "payload", Value: payloadSize, Unit: "B", Note: "params of each sys.ping (the round trip payload)"})
	r.add(&Figure{Name: "agent_bytes_written_per_req", Value: float64(w1-w0) / float64(n), Unit: "B", Baseline: "payload",
		Note: "/proc/PID/io write_bytes of the agent during the burst, per request: its journal, with the zeros it writes ahead. The kernel counts whole pages as they are dirtied, and every synced record dirties at least one; the filesystem's own journal writes are not counted"})
	if strace == nil {
		r.skip("agent_fsyncs_per_req", "strace is not installed")
		return nil
	}
	strace.Process.Signal(syscall.SIGINT)
	strace.Wait()
	syncs, err := parseStrace(straceOut)
	if err != nil {
		return err
	}
	r.add(&Figure{Name: "agent_fsyncs_per_req", Value: float64(syncs) / float64(n), Unit: "fsync",
		Note: "fsync+fdatasync calls of the agent during the burst (strace -c), per request; group commit may share one"})
	return nil
}

// attachStrace counts the fsyncs of pid until it gets SIGINT. It returns
// nil if strace is missing.
func (r *runner) attachStrace(pid int) (*exec.Cmd, string) {
	path, err := exec.LookPath("strace")
	if err != nil {
		return nil, ""
	}
	out := filepath.Join(r.work, "strace.txt")
	cmd := exec.Command(path, "-c", "-f", "-e", "trace=fsync,fdatasync", "-o", out, "-p", strconv.Itoa(pid))
	if err := cmd.Start(); err != nil {
		return nil, ""
	}
	time.Sleep(500 * time.Millisecond) // attach to every thread before the burst
	return cmd, out
}

// parseStrace sums the calls column of strace -c output.
func parseStrace(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	total := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		if name := fs[len(fs)-1]; name == "fsync" || name == "fdatasync" {
			// % time, seconds, usecs/call, calls, [errors,] syscall
			if n, err := strconv.Atoi(fs[3]); err == nil {
				total += n
			}
		}
	}
	return total, sc.Err()
}

// binarySizes reports the stripped agent per architecture from Dist, or
// only bin when Dist has none.
func (r *runner) binarySizes(bin string) {
	found := false
	for _, a := range agentArches {
		fi, err := os.Stat(filepath.Join(r.opts.Dist, "tether-agent-linux-"+a))
		if err != nil {
			continue
		}
		found = true
		f := &Figure{Name: "agent_bin_" + a, Value: float64(fi.Size()), Unit: "B", Note: "stripped static agent from make cross"}
		if m := archMax[a]; m > 0 {
			f.Budget, f.Max = "6 MiB", m
		} else {
			f.Baseline = "agent_bin_armv6"
		}
		r.add(f)
	}
	if !found {
		if fi, err := os.Stat(bin); err == nil {
			r.add(&Figure{Name: "agent_bin_" + runtime.GOARCH, Value: float64(fi.Size()), Unit: "B", Baseline: "agent_bin_" + runtime.GOARCH,
				Note: "stripped static agent built for this machine (run make cross for every architecture)"})
		}
		r.skip("agent_bin per architecture", "no make cross output in "+r.opts.Dist)
	}
}
