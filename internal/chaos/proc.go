package chaos

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proc is a started relay or agent process. Its output is appended to a
// log file shared by all its incarnations.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // set before done is closed
}

func startProc(name, bin string, args []string, logPath string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== %s start %s\n", name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("chaos: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks the process to shut down politely, killing it after grace.
// It reports whether it exited on its own.
func (p *proc) stop(grace time.Duration) bool {
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		p.kill()
		return false
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// adminSecret runs "tether-relay KIND add NAME --data DIR" and returns the
// secret printed on the last line.
func adminSecret(ctx context.Context, relayBin, kind, name, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, relayBin, kind, "add", name, "--data", dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("chaos: tether-relay %s add: %w", kind, err)
	}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	if last == "" {
		return "", fmt.Errorf("chaos: tether-relay %s add printed no secret", kind)
	}
	return last, nil
}

// BuildBinaries builds tether-relay and tether-agent (without the race
// detector) into dir and returns their paths. It must run inside the
// module.
func BuildBinaries(ctx context.Context, dir string) (relayBin, agentBin string, err error) {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"github.com/tetherhq/tether/cmd/tether-relay", "github.com/tetherhq/tether/cmd/tether-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("chaos: go build: %w\n%s", err, out)
	}
	return filepath.Join(dir, "tether-relay"), filepath.Join(dir, "tether-agent"), nil
}
