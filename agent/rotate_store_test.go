package agent

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runUnprivileged re-runs the calling test as uid/gid 65534 when the test
// runs as root (root ignores the directory permissions the test relies
// on). It reports whether the caller should go on (it is the unprivileged
// run).
func runUnprivileged(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return true
	}
	if os.Getenv("TETHER_TEST_UNPRIVILEGED") != "" {
		t.Fatal("still root in the unprivileged run")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "tether-exe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	copyExe := filepath.Join(dir, "agent.test")
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(copyExe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	dst.Close()
	cmd := exec.Command(copyExe, "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TETHER_TEST_UNPRIVILEGED=1", "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged run failed: %v\n%s", err, out)
	}
	return false
}

// writeFileAtomic can fail after its rename (opening or fsyncing the
// directory). The token file then already holds the new token, and the
// agent uses it too, unconfirmed: were it to keep the old one, the next
// session (on the old token) would be sent a fresh token and the one in
// the file would stop working; if that fresh token could not be stored
// either (here: the directory has become unwritable, as after an I/O
// error that remounts the filesystem read-only), the next restart would
// read a dead token from the file and be refused (401) for good.
func TestRotationStoreFailingAfterRenameDoesNotLockOut(t *testing.T) {
	if !runUnprivileged(t) {
		return
	}
	r := startCuttableRelay(t)
	tokDir := filepath.Join(t.TempDir(), "etc-tether")
	if err := os.Mkdir(tokDir, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(tokDir, "token")
	if err := os.WriteFile(file, []byte(r.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(tokDir, 0o700) })
	// Writable and searchable, not readable: CreateTemp and rename work,
	// opening the directory to fsync it fails.
	if err := os.Chmod(tokDir, 0o300); err != nil {
		t.Fatal(err)
	}
	a, logs, stop := runTestAgent(t, Config{Relay: r.url(), Token: r.token, TokenFile: file})
	waitUntil(t, "connect", func() bool { return a.Status().Connected })
	if err := r.srv.RotateDevice("dev1", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "store failure", func() bool { return strings.Contains(logs.String(), `level=ERROR msg="new device token`) })
	b, _ := os.ReadFile(file)
	inFile := strings.TrimSpace(string(b))
	if inFile != a.token.get() {
		t.Errorf("after a failed store the token file holds a different token than the agent uses (file changed: %v)", inFile != r.token)
	}

	// The directory becomes unwritable; the session drops and the agent
	// comes back on the old token, which the relay answers with a fresh
	// rotation the agent cannot store.
	if err := os.Chmod(tokDir, 0o100); err != nil {
		t.Fatal(err)
	}
	// A network blip: the agent's connection drops and it reconnects.
	dials := r.dials.Load()
	r.cutConnections()
	waitUntil(t, "reconnect", func() bool { return r.dials.Load() > dials && a.Status().Connected })
	time.Sleep(300 * time.Millisecond) // any rotation of the new session is tried (and cannot be stored)

	// The board restarts from its token file.
	stop()
	b2, logs2, _ := runTestAgent(t, Config{Relay: r.url(), Token: inFile, TokenFile: file})
	deadline := time.Now().Add(2 * time.Second)
	for !b2.Status().Connected {
		if time.Now().After(deadline) {
			l := strings.Split(strings.TrimSpace(logs2.String()), "\n")
			t.Fatalf("device locked out: its token file holds a token the relay no longer accepts\n%s", l[len(l)-1])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cuttableRelay is a rotationRelay whose connections the test can cut, as
// a network failure would.
type cuttableRelay struct {
	*rotationRelay
	mu    sync.Mutex
	conns []net.Conn
}

type trackingListener struct {
	net.Listener
	r *cuttableRelay
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.r.mu.Lock()
		l.r.conns = append(l.r.conns, c)
		l.r.mu.Unlock()
	}
	return c, err
}

func (r *cuttableRelay) cutConnections() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func startCuttableRelay(t *testing.T) *cuttableRelay {
	t.Helper()
	r := &cuttableRelay{rotationRelay: &rotationRelay{}}
	serveRotationRelay(t, r.rotationRelay, func(l net.Listener) net.Listener { return trackingListener{Listener: l, r: r} })
	t.Cleanup(r.cutConnections) // before the server closes (cleanups run last first)
	return r
}
