package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherhq/tether/relay"
)

// tarNames lists the files of the tar at path.
func tarNames(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		names = append(names, h.Name)
	}
}

// tether-relay backup takes the copy from the relay serving the directory,
// through its admin socket, and from the directory itself once the relay
// has stopped.
func TestBackupCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := admin("device", "add", []string{"pi-1", "--data", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	cfg := relay.DefaultConfig()
	cfg.DataDir = dir
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	waitSocket(t, filepath.Join(dir, relay.AdminSocket))

	takeBackup(t, dir, "taken by the serving relay")

	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, relay.AdminSocket)); err == nil {
		t.Error("the admin socket outlived the relay")
	}
	takeBackup(t, dir, "taken from the directory")
}

// takeBackup runs tether-relay backup on dir and checks that it says how
// (how) and wrote a whole copy, which tether-relay restore unpacks into a
// new directory.
func takeBackup(t *testing.T, dir, how string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "b.tar")
	defer func() {
		var stdout bytes.Buffer
		to := filepath.Join(t.TempDir(), "restored")
		if err := run([]string{"restore", "--from", out, "--data", to}, &stdout, io.Discard); err != nil {
			t.Fatalf("restore: %v", err)
		}
		if !strings.Contains(stdout.String(), "devices: 1") {
			t.Errorf("restore says %q", stdout.String())
		}
		if err := run([]string{"restore", "--from", out, "--data", to}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Errorf("restore over a restored directory: %v", err)
		}
	}()
	var stdout bytes.Buffer
	if err := run([]string{"backup", "--data", dir, "--out", out}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), how) {
		t.Errorf("stdout %q, want %q", stdout.String(), how)
	}
	if got := strings.Join(tarNames(t, out), ","); got != "credentials.json,relay.db" {
		t.Errorf("backup holds %s", got)
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for range 500 {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

// A copy cut short by the relay leaves no file behind, and the command
// says it failed.
func TestBackupCutShortLeavesNoFile(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, relay.AdminSocket))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := tar.NewWriter(w)
		tw.WriteHeader(&tar.Header{Name: "relay.db", Mode: 0o600, Size: 1 << 20})
		tw.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}), ErrorLog: nil}
	go hs.Serve(ln)
	defer hs.Close()

	out := filepath.Join(t.TempDir(), "b.tar")
	err = run([]string{"backup", "--data", dir, "--out", out}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("a copy cut short was taken for a whole one")
	}
	if left, _ := filepath.Glob(out + "*"); len(left) > 0 {
		t.Errorf("files left behind: %v", left)
	}
}

// A data directory whose path is too long for a Unix socket has no admin
// socket (the relay serves without it): stopped, it is copied directly.
func TestBackupCommandLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	if err := admin("device", "add", []string{"pi-1", "--data", dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	cfg := relay.DefaultConfig()
	cfg.DataDir = dir
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	takeBackup(t, dir, "taken from the directory")
}
