package bench

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tetherhq/tether/relay"
)

// child is a process started for one role. Its stdout is read line by
// line into lines; its stderr goes to a log file in the work directory.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{} // closed once the process is reaped
}

// start runs role with args in a new process.
func (r *runner) start(role string, args ...string) (*child, error) {
	r.seq++
	logPath := filepath.Join(r.work, fmt.Sprintf("%02d-%s.log", r.seq, role))
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	argv := append(append(append([]string{}, r.opts.Self[1:]...), role), args...)
	cmd := exec.Command(r.opts.Self[0], argv...)
	cmd.Env = append(os.Environ(), r.opts.SelfEnv...)
	cmd.Stderr = lf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("bench: start %s: %w", role, err)
	}
	c := &child{name: role, cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		cmd.Wait()
		lf.Close()
		close(c.done)
	}()
	r.children = append(r.children, c)
	return c, nil
}

// expect waits for a line starting with prefix and returns its fields
// after the prefix.
func (c *child) expect(prefix string, timeout time.Duration) ([]string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return nil, fmt.Errorf("bench: %s exited before %q", c.name, prefix)
			}
			if f := strings.Fields(l); len(f) > 0 && f[0] == prefix {
				return f[1:], nil
			}
		case <-t.C:
			return nil, fmt.Errorf("bench: %s: no %q within %v", c.name, prefix, timeout)
		}
	}
}

// ask sends a command line and waits for the answer line.
func (c *child) ask(cmd, answer string, timeout time.Duration) ([]string, error) {
	if _, err := fmt.Fprintln(c.stdin, cmd); err != nil {
		return nil, err
	}
	return c.expect(answer, timeout)
}

// free asks the child for a full GC and FreeOSMemory and waits for it.
func (c *child) free() error {
	c.cmd.Process.Signal(syscall.SIGUSR1)
	_, err := c.expect("freed", 30*time.Second)
	return err
}

// stop ends the child: stdin closes and SIGTERM; SIGKILL after grace.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	c.stdin.Close()
	c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		select {
		case <-c.lines: // keep the reader moving
		case <-c.done:
			return
		case <-t.C:
			c.cmd.Process.Kill()
			<-c.done
			return
		}
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// procStatus reads fields (in kB) such as VmRSS and VmHWM of process pid.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("bench: no %s in /proc/%d/status", field, pid)
}

// procIO reads a field of /proc/PID/io.
func procIO(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("bench: no %s in /proc/%d/io", field, pid)
}

// makeDevices registers n devices and one client in a fresh relay data
// directory and writes the tokens to DIR/tokens. `tether-relay device add`
// rewrites credentials.json once per device, which is quadratic at 50,000
// devices, so the file is written here in one go, in the format of
// relay/credentials.go (SHA-256 of each secret, never the secret).
func makeDevices(dir string, n int) (tokensPath, clientKey string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	type entry struct {
		Name    string    `json:"name"`
		SHA256  string    `json:"sha256"`
		Created time.Time `json:"created"`
	}
	var creds struct {
		Devices []entry `json:"devices"`
		Clients []entry `json:"clients"`
	}
	var toks strings.Builder
	now := time.Now().UTC()
	for i := range n {
		b := make([]byte, 32)
		rand.Read(b)
		tok := relay.DeviceTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
		sum := sha256.Sum256([]byte(tok))
		creds.Devices = append(creds.Devices, entry{Name: deviceID(i), SHA256: hex.EncodeToString(sum[:]), Created: now})
		fmt.Fprintf(&toks, "%s %s\n", deviceID(i), tok)
	}
	creds.Clients = []entry{}
	b, err := json.Marshal(creds)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "credentials.json"), b, 0o600); err != nil {
		return "", "", err
	}
	tokensPath = filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokensPath, []byte(toks.String()), 0o600); err != nil {
		return "", "", err
	}
	clientKey, err = relay.AddClient(dir, "bench")
	return tokensPath, clientKey, err
}

func deviceID(i int) string { return fmt.Sprintf("dev-%05d", i) }
