package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The packages are built here with the same recipes and the same nfpm
// (go tool nfpm, pinned in go.mod) as `make package`, around small stand-in
// binaries, then opened with the standard library: ar, tar, gzip.

const pkgVersion = "1.2.3+4.gabc"

type debFile struct {
	mode  int64
	owner string
	data  []byte
}

type deb struct {
	name     string
	control  map[string]string
	conf     []string            // conffiles
	scripts  map[string]*debFile // postinst, prerm, ...
	files    map[string]*debFile // data.tar, paths without the leading "."
	md5sums  string
	debinary string
}

var (
	nfpmOnce sync.Once
	nfpmErr  error
)

// buildDeb runs nfpm on recipe for arch around a stand-in binary and
// returns the parsed package.
func buildDeb(t *testing.T, recipe, arch string) (*deb, []byte) {
	t.Helper()
	dir := t.TempDir()
	stub := []byte("#!/bin/sh\necho stand-in for " + recipe + " on " + arch + "\n")
	binary := writeFile(t, filepath.Join(dir, "bin-"+arch), string(stub))
	run := func() error {
		cmd := exec.Command("go", "tool", "nfpm", "package", "-f", "deploy/packaging/"+recipe, "-p", "deb", "-t", dir+"/")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "TETHER_ARCH="+arch, "TETHER_BINARY="+binary,
			"TETHER_VERSION="+pkgVersion, "TETHER_MAINTAINER=tether test <test@tether.invalid>", "SOURCE_DATE_EPOCH=1700000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nfpm %s %s: %v\n%s", recipe, arch, err, out)
		}
		return nil
	}
	// The first run compiles nfpm; later ones reuse the build cache.
	first := false
	nfpmOnce.Do(func() { first, nfpmErr = true, run() })
	if nfpmErr != nil {
		t.Fatal(nfpmErr)
	}
	if !first {
		if err := run(); err != nil {
			t.Fatal(err)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s, got %v", dir, debs)
	}
	d, err := readDeb(debs[0])
	if err != nil {
		t.Fatalf("%s: %v", debs[0], err)
	}
	return d, stub
}

// readDeb parses a .deb: an ar archive of debian-binary, control.tar.gz
// and data.tar.gz.
func readDeb(path string) (*deb, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(raw, []byte("!<arch>\n")) {
		return nil, errors.New("not an ar archive")
	}
	d := &deb{name: filepath.Base(path), control: map[string]string{}, scripts: map[string]*debFile{}, files: map[string]*debFile{}}
	var members []string
	for rest := raw[8:]; len(rest) >= 60; {
		hdr := rest[:60]
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[:16])), "/")
		size, err := strconv.Atoi(strings.TrimSpace(string(hdr[48:58])))
		if err != nil || string(hdr[58:60]) != "`\n" || 60+size > len(rest) {
			return nil, fmt.Errorf("bad ar header %q", hdr)
		}
		body := rest[60 : 60+size]
		rest = rest[60+size+size%2:]
		members = append(members, name)
		switch name {
		case "debian-binary":
			d.debinary = string(body)
		case "control.tar.gz":
			err = eachTarFile(body, func(name string, f *debFile) {
				switch name {
				case "./control":
					sc := bufio.NewScanner(bytes.NewReader(f.data))
					for sc.Scan() {
						if k, v, ok := strings.Cut(sc.Text(), ": "); ok && !strings.HasPrefix(k, " ") {
							d.control[k] = v
						}
					}
				case "./conffiles":
					d.conf = strings.Fields(string(f.data))
				case "./md5sums":
					d.md5sums = string(f.data)
				default:
					d.scripts[strings.TrimPrefix(name, "./")] = f
				}
			})
		case "data.tar.gz":
			err = eachTarFile(body, func(name string, f *debFile) { d.files[strings.TrimPrefix(name, ".")] = f })
		default:
			err = fmt.Errorf("unexpected member %q (compression must be gzip)", name)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if want := []string{"debian-binary", "control.tar.gz", "data.tar.gz"}; !slices.Equal(members, want) {
		return nil, fmt.Errorf("members %v, want %v", members, want)
	}
	return d, nil
}

func eachTarFile(gz []byte, fn func(string, *debFile)) error {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		fn(h.Name, &debFile{mode: h.Mode & 0o7777, owner: h.Uname + ":" + h.Gname, data: data})
	}
}

func (d *deb) wantFile(t *testing.T, path string, mode int64, same string) {
	t.Helper()
	f := d.files[path]
	if f == nil {
		t.Errorf("%s: no %s", d.name, path)
		return
	}
	if f.mode != mode || f.owner != "root:root" {
		t.Errorf("%s: %s is %o %s, want %o root:root", d.name, path, f.mode, f.owner, mode)
	}
	if !strings.Contains(d.md5sums, strings.TrimPrefix(path, "/")) {
		t.Errorf("%s: %s missing from md5sums", d.name, path)
	}
	if same != "" {
		want, err := os.ReadFile(same)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.data, want) {
			t.Errorf("%s: %s differs from %s", d.name, path, same)
		}
	}
}

func (d *deb) wantScripts(t *testing.T, names ...string) {
	t.Helper()
	var got []string
	for n, f := range d.scripts {
		got = append(got, n)
		if f.mode != 0o755 || !bytes.HasPrefix(f.data, []byte("#!/bin/sh\n")) {
			t.Errorf("%s: %s: mode %o, want 755 and #!/bin/sh", d.name, n, f.mode)
		}
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = bytes.NewReader(f.data)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %s: sh -n: %v\n%s", d.name, n, err, out)
		}
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Errorf("%s: maintainer scripts %v, want %v", d.name, got, names)
	}
}

func TestPackageAgent(t *testing.T) {
	for _, arch := range []string{"armhf", "arm64", "amd64"} {
		t.Run(arch, func(t *testing.T) {
			d, stub := buildDeb(t, "tether-agent.nfpm.yaml", arch)
			if want := "tether-agent_" + pkgVersion + "_" + arch + ".deb"; d.name != want {
				t.Errorf("file %s, want %s", d.name, want)
			}
			if d.debinary != "2.0\n" {
				t.Errorf("debian-binary %q", d.debinary)
			}
			for k, v := range map[string]string{"Package": "tether-agent", "Architecture": arch, "Version": pkgVersion,
				"Maintainer": "tether test <test@tether.invalid>"} {
				if d.control[k] != v {
					t.Errorf("control %s: %q, want %q", k, d.control[k], v)
				}
			}
			if want := []string{"/etc/init.d/tether-agent", "/etc/tether/agent.yaml"}; !slices.Equal(sorted(d.conf), want) {
				t.Errorf("conffiles %v, want %v", d.conf, want)
			}
			d.wantFile(t, "/usr/bin/tether-agent", 0o755, "")
			if f := d.files["/usr/bin/tether-agent"]; f != nil && !bytes.Equal(f.data, stub) {
				t.Error("packaged binary is not the one given in TETHER_BINARY")
			}
			d.wantFile(t, "/etc/tether/agent.yaml", 0o644, "../deploy/packaging/agent.yaml")
			d.wantFile(t, "/etc/init.d/tether-agent", 0o755, "../deploy/init.d/tether-agent")
			d.wantFile(t, "/lib/systemd/system/tether-agent.service", 0o644, "../deploy/systemd/tether-agent.service")
			d.wantFile(t, "/usr/share/doc/tether-agent/agent.example.yaml", 0o644, "../deploy/agent.example.yaml")
			if len(d.files) != 5 {
				t.Errorf("%d files in the package, want 5: %v", len(d.files), keys(d.files))
			}
			// dpkg must never own the journal, or a removal could take it.
			for p := range d.files {
				if strings.HasPrefix(p, "/var/") {
					t.Errorf("package ships %s", p)
				}
			}
			d.wantScripts(t, "postinst", "prerm", "postrm")
		})
	}
}

func TestPackageRelay(t *testing.T) {
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) {
			d, _ := buildDeb(t, "tether-relay.nfpm.yaml", arch)
			if want := "tether-relay_" + pkgVersion + "_" + arch + ".deb"; d.name != want {
				t.Errorf("file %s, want %s", d.name, want)
			}
			if d.control["Package"] != "tether-relay" || d.control["Architecture"] != arch {
				t.Errorf("control %v", d.control)
			}
			if want := []string{"/etc/tether/relay"}; !slices.Equal(d.conf, want) {
				t.Errorf("conffiles %v, want %v", d.conf, want)
			}
			d.wantFile(t, "/usr/bin/tether-relay", 0o755, "")
			d.wantFile(t, "/etc/tether/relay", 0o644, "../deploy/packaging/relay.env")
			d.wantFile(t, "/lib/systemd/system/tether-relay.service", 0o644, "../deploy/systemd/tether-relay.service")
			if len(d.files) != 3 {
				t.Errorf("%d files in the package, want 3: %v", len(d.files), keys(d.files))
			}
			d.wantScripts(t, "postinst", "prerm", "postrm")
		})
	}
}

// TestPackageAgentScripts runs the agent's maintainer scripts with every
// command they call replaced by a stub that logs its arguments (PATH holds
// nothing else), to check what install, upgrade, remove and purge do.
func TestPackageAgentScripts(t *testing.T) {
	stubs := t.TempDir()
	logf := filepath.Join(t.TempDir(), "calls")
	for name, code := range map[string]int{
		"getent": 2, "groupadd": 0, "useradd": 0, "usermod": 0, "addgroup": 0, "adduser": 0, "id": 0,
		"tr": 0, "grep": 1, "mkdir": 0, "chown": 0, "chmod": 0, "chgrp": 0, "rm": 0, "rmdir": 0,
		"systemctl": 0, "update-rc.d": 0, "invoke-rc.d": 0,
	} {
		writeFile(t, filepath.Join(stubs, name), fmt.Sprintf("#!/bin/sh\necho \"${0##*/} $*\" >>%q\nexit %d\n", logf, code))
		os.Chmod(filepath.Join(stubs, name), 0o755)
	}
	run := func(script string, args ...string) string {
		t.Helper()
		os.Remove(logf)
		cmd := exec.Command("/bin/sh", append([]string{"../deploy/packaging/" + script}, args...)...)
		cmd.Env = []string{"PATH=" + stubs}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", script, args, err, out)
		}
		calls, _ := os.ReadFile(logf)
		return string(calls)
	}

	calls := run("agent.postinst", "configure", "")
	for _, want := range []string{
		"groupadd --system gpio", "groupadd --system i2c", "groupadd --system spi",
		"useradd --system --user-group --home-dir /var/lib/tether",
		"usermod -a -G gpio tether", "usermod -a -G i2c tether", "usermod -a -G spi tether",
		"mkdir -p /var/lib/tether", "chown tether:tether /var/lib/tether",
	} {
		if !strings.Contains(calls, want) {
			t.Errorf("postinst configure: no %q in\n%s", want, calls)
		}
	}
	for _, script := range []string{"agent.postrm", "agent.prerm"} {
		for _, arg := range []string{"upgrade", "failed-upgrade"} {
			if calls := run(script, arg, "1.0.0"); strings.Contains(calls, "rm ") || strings.Contains(calls, " stop") {
				t.Errorf("%s %s must keep the journal and the service:\n%s", script, arg, calls)
			}
		}
	}
	if calls := run("agent.postrm", "remove"); strings.Contains(calls, "rm ") {
		t.Errorf("postrm remove deletes files:\n%s", calls)
	}
	if calls := run("agent.postrm", "purge"); !strings.Contains(calls, "rm -rf /var/lib/tether") {
		t.Errorf("postrm purge keeps the journal:\n%s", calls)
	}
}

// TestPackageVersion checks the Debian version `make package` derives
// from `git describe`: dpkg and apt order upgrades by it, so a bare commit
// must sort below every release, whatever its hash starts with.
func TestPackageVersion(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	for _, tc := range []struct{ describe, want string }{
		{"v1.2.3", "1.2.3"},
		{"v1.2.3-4-gabc1234", "1.2.3+4.gabc1234"},
		{"v1.2.3-4-g6bc1234-dirty", "1.2.3+4.g6bc1234.dirty"},
		{"abc1234", "0.0.0+abc1234"},
		{"abc1234-dirty", "0.0.0+abc1234.dirty"},
		{"67cc4f3", "0.0.0+67cc4f3"},
		{"67cc4f3-dirty", "0.0.0+67cc4f3.dirty"},
		{"1234567", "0.0.0+1234567"},
		{"dev", "0.0.0+dev"},
	} {
		// -n prints the recipe with the version it would package.
		cmd := exec.Command("make", "-n", "--no-print-directory", "package", "VERSION="+tc.describe)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make -n package VERSION=%s: %v\n%s", tc.describe, err, out)
		}
		_, rest, ok := strings.Cut(string(out), "TETHER_VERSION='")
		got, _, _ := strings.Cut(rest, "'")
		if !ok || got != tc.want {
			t.Errorf("VERSION=%s: package version %q, want %q", tc.describe, got, tc.want)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}
