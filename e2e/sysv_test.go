package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The deploy scripts run for real here: install.sh into a scratch root (also
// through a stand-in for ssh), then the installed SysV init script starts,
// reports and stops a real agent connected to an in-process relay.

// sh runs a command with extra environment and returns its exit code and
// combined output.
func sh(t *testing.T, env []string, name string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := exitCode(err)
	if code < 0 {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return code, out.String()
}

func installScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../deploy/install.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wantMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if fi.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
	}
}

func TestInstallScriptLocalRoot(t *testing.T) {
	root := t.TempDir()
	tok := writeFile(t, t.TempDir()+"/token", "tdv_x\n")
	agentBin := filepath.Join(binaries(t), "tether-agent")
	code, out := sh(t, nil, installScript(t), "--root", root, "--binary", agentBin,
		"--relay", "wss://relay.example.com/x?a=1&b=2", "--token-file", tok)
	if code != 0 {
		t.Fatalf("install.sh: exit %d\n%s", code, out)
	}
	wantMode(t, root+"/usr/local/bin/tether-agent", 0o755)
	wantMode(t, root+"/etc/tether/agent.yaml", 0o644)
	wantMode(t, root+"/etc/tether/token", 0o600)
	wantMode(t, root+"/etc/init.d/tether-agent", 0o755)
	wantMode(t, root+"/etc/systemd/system/tether-agent.service", 0o644)
	if fi, err := os.Stat(root + "/var/lib/tether"); err != nil || !fi.IsDir() {
		t.Errorf("state directory: %v", err)
	}
	conf, _ := os.ReadFile(root + "/etc/tether/agent.yaml")
	if !strings.Contains(string(conf), "\nrelay: wss://relay.example.com/x?a=1&b=2\n") {
		t.Errorf("relay not set in the config:\n%s", conf)
	}
	unit, _ := os.ReadFile(root + "/etc/systemd/system/tether-agent.service")
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/tether-agent --config /etc/tether/agent.yaml") {
		t.Errorf("unit does not start the installed binary:\n%s", unit)
	}
	initd, _ := os.ReadFile(root + "/etc/init.d/tether-agent")
	if !strings.Contains(string(initd), "DAEMON=${DAEMON:-$TETHER_ROOT/usr/local/bin/$NAME}") {
		t.Error("init script does not default to the installed binary")
	}
	if !strings.Contains(out, "nothing enabled or started") {
		t.Errorf("install into a root should not activate anything:\n%s", out)
	}

	// A second run keeps the edited config.
	writeFile(t, root+"/etc/tether/agent.yaml", "relay: ws://edited\n")
	if code, out := sh(t, nil, installScript(t), "--root", root, "--binary", agentBin); code != 0 {
		t.Fatalf("second install: exit %d\n%s", code, out)
	}
	if conf, _ := os.ReadFile(root + "/etc/tether/agent.yaml"); string(conf) != "relay: ws://edited\n" {
		t.Errorf("existing config replaced:\n%s", conf)
	}
}

// TestInstallScriptOverSSH drives --host with a stand-in for ssh that runs
// the remote command locally, so the tar pipe and the remote quoting are
// exercised without a board.
func TestInstallScriptOverSSH(t *testing.T) {
	root := t.TempDir()
	fake := writeFile(t, t.TempDir()+"/ssh", "#!/bin/sh\n# stand-in for ssh: drop options and the destination, run the command here\nwhile [ $# -gt 1 ]; do case $1 in -[oilp]) shift 2;; -*) shift;; *) shift; break;; esac; done\nexec sh -c \"$1\"\n")
	os.Chmod(fake, 0o755)
	cfg := writeFile(t, t.TempDir()+"/my agent.yaml", "relay: ws://it's-mine\nboard: mock\n")
	agentBin := filepath.Join(binaries(t), "tether-agent")
	code, out := sh(t, []string{"SSH=" + fake, "SSH_OPTS=-o BatchMode=yes", "SUDO="}, installScript(t),
		"--host", "pi@board", "--root", root, "--binary", agentBin, "--config", cfg, "--init", "sysv")
	if code != 0 {
		t.Fatalf("install.sh --host: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "installing on pi@board") {
		t.Errorf("output:\n%s", out)
	}
	wantMode(t, root+"/usr/local/bin/tether-agent", 0o755)
	wantMode(t, root+"/etc/init.d/tether-agent", 0o755)
	if _, err := os.Stat(root + "/etc/systemd/system/tether-agent.service"); err == nil {
		t.Error("--init sysv installed a systemd unit")
	}
	if conf, _ := os.ReadFile(root + "/etc/tether/agent.yaml"); string(conf) != "relay: ws://it's-mine\nboard: mock\n" {
		t.Errorf("config not copied verbatim:\n%s", conf)
	}
}

// TestSysVScriptPackageRemoved runs the init script as a removed but not
// purged package leaves it: the script and its rc links stay, the binary
// is gone. Booting such a board must not report a failed service.
func TestSysVScriptPackageRemoved(t *testing.T) {
	script, err := filepath.Abs("../deploy/init.d/tether-agent")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"TETHER_ROOT=" + t.TempDir(), "RUN_AS="}
	for _, action := range []string{"start", "restart", "stop"} {
		if code, out := sh(t, env, "/bin/sh", script, action); code != 0 || !strings.Contains(out, "tether-agent") {
			t.Errorf("%s without the binary: exit %d\n%s", action, code, out)
		}
	}
	if code, out := sh(t, env, "/bin/sh", script, "status"); code != 3 {
		t.Errorf("status without the binary: exit %d, want 3 (not running)\n%s", code, out)
	}
}

// TestSysVScript installs the agent into a scratch root and runs the SysV
// script's start, status and stop against a real relay, with
// start-stop-daemon when the machine has it and with the plain fallback.
func TestSysVScript(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	modes := []string{"fallback"}
	if _, err := exec.LookPath("start-stop-daemon"); err == nil {
		modes = append([]string{"start-stop-daemon"}, modes...)
	} else {
		t.Log("start-stop-daemon not installed: testing the fallback only")
	}
	r := startRelay(t, t.TempDir(), "", nil)
	key := addClient(t, r.dir, "sysv-test")
	c := &api{t: t, base: r.url(), key: key}
	agentBin := filepath.Join(binaries(t), "tether-agent")

	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			root := t.TempDir()
			device := "pi-sysv-" + strings.ReplaceAll(mode, "-", "")
			tok := writeFile(t, t.TempDir()+"/token", addDevice(t, r.dir, device)+"\n")
			if code, out := sh(t, nil, installScript(t), "--root", root, "--binary", agentBin,
				"--init", "sysv", "--token-file", tok); code != 0 {
				t.Fatalf("install.sh: exit %d\n%s", code, out)
			}
			// The installed config points at /etc and /var/lib; inside the
			// scratch root the paths carry its prefix.
			writeFile(t, root+"/etc/tether/agent.yaml", fmt.Sprintf(
				"relay: %s\ntoken_file: %s/etc/tether/token\nboard: mock\nstate: %s/var/lib/tether\nlog_format: json\n",
				r.wsURL(), root, root))
			env := []string{"TETHER_ROOT=" + root, "RUN_AS=", "STOP_TIMEOUT=10"}
			if mode == "fallback" {
				env = append(env, "START_STOP_DAEMON=none")
			}
			initd := root + "/etc/init.d/tether-agent"
			pidfile := root + "/var/run/tether-agent.pid"
			t.Cleanup(func() { sh(t, env, initd, "stop") }) // never leave an agent behind

			if code, out := sh(t, env, initd, "status"); code != 3 {
				t.Errorf("status before start: exit %d, want 3\n%s", code, out)
			}
			code, out := sh(t, env, initd, "start")
			if code != 0 {
				log, _ := os.ReadFile(root + "/var/log/tether-agent.log")
				t.Fatalf("start: exit %d\n%s\nlog:\n%s", code, out, log)
			}
			pid := readPid(t, pidfile)
			if !processAlive(pid) {
				t.Fatalf("pid %d from %s is not running", pid, pidfile)
			}
			eventually(t, 15*time.Second, "device online", func() bool { return c.device(device).Online })
			rec := c.call(device, "sys.ping", map[string]any{"via": "init script"})
			wantState(t, rec, "succeeded", "")

			if code, out := sh(t, env, initd, "status"); code != 0 || !strings.Contains(out, fmt.Sprint(pid)) {
				t.Errorf("status while running: exit %d\n%s", code, out)
			}
			if code, out := sh(t, env, initd, "start"); code != 0 || !strings.Contains(out, "already running") {
				t.Errorf("second start: exit %d\n%s", code, out)
			}
			if readPid(t, pidfile) != pid {
				t.Error("second start replaced the running agent")
			}

			if code, out := sh(t, env, initd, "stop"); code != 0 {
				t.Fatalf("stop: exit %d\n%s", code, out)
			}
			if processAlive(pid) {
				t.Errorf("agent pid %d still running after stop", pid)
			}
			if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
				t.Errorf("pid file left behind: %v", err)
			}
			if code, out := sh(t, env, initd, "status"); code != 3 {
				t.Errorf("status after stop: exit %d, want 3\n%s", code, out)
			}
			eventually(t, 15*time.Second, "device offline", func() bool { return !c.device(device).Online })
			log, _ := os.ReadFile(root + "/var/log/tether-agent.log")
			if !strings.Contains(string(log), `"msg":"tether-agent stopped"`) {
				t.Errorf("agent did not stop cleanly; log:\n%s", log)
			}
			if _, err := os.Stat(root + "/var/lib/tether/journal"); err != nil {
				t.Errorf("journal not in the state directory: %v", err)
			}

			// A stale pid file (agent killed) reads as "dead", and start
			// recovers from it.
			writeFile(t, pidfile, "999999\n")
			if code, _ := sh(t, env, initd, "status"); code != 1 {
				t.Errorf("status with a stale pid file: exit %d, want 1", code)
			}

			// A broken config makes start fail and say why.
			writeFile(t, root+"/etc/tether/agent.yaml", "relay: ws://127.0.0.1:9\ntoken: x\nboard: mock\ncredits: none\n")
			code, out = sh(t, env, initd, "start")
			if code == 0 || !strings.Contains(out, "agent.yaml:4: credits:") {
				t.Errorf("start with a bad config: exit %d\n%s", code, out)
			}
		})
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(data), &pid); err != nil {
		t.Fatalf("%s: %q", path, data)
	}
	return pid
}

// processAlive reports whether pid runs (a zombie counts as gone: the
// agent was started by the script, so it is not our child to reap).
func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	return !strings.Contains(string(stat), ") Z ")
}

// TestSystemdUnitsVerify runs systemd-analyze verify on both units, with
// ExecStart pointed at real binaries (verify insists they exist). Any
// warning about the unit file fails the test: verify itself exits 0 on
// unknown keys.
func TestSystemdUnitsVerify(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := binaries(t)
	for _, name := range []string{"tether-agent", "tether-relay"} {
		unit, err := os.ReadFile("../deploy/systemd/" + name + ".service")
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(unit), "/usr/bin/"+name, filepath.Join(bin, name))
		path := writeFile(t, filepath.Join(dir, name+".service"), s)
		code, out := sh(t, []string{"SYSTEMD_LOG_LEVEL=notice"}, tool, "verify", path)
		if code != 0 || strings.Contains(out, name+".service") {
			t.Errorf("systemd-analyze verify %s: exit %d\n%s", name, code, out)
		}
		want := []string{"Restart=always", "RestartSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=", "TimeoutStopSec="}
		if name == "tether-agent" {
			want = append(want, "SupplementaryGroups=gpio i2c spi", "DevicePolicy=closed", "DeviceAllow=char-gpiochip rw",
				"DeviceAllow=char-i2c rw", "DeviceAllow=char-spi rw", "DeviceAllow=/dev/gpiomem rw")
		}
		for _, w := range want {
			if !strings.Contains(s, "\n"+w) {
				t.Errorf("%s: no %s", name, w)
			}
		}
	}
}
