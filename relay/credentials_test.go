package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"pi-1", true},
		{"Board_2.lab", true},
		{"", false},
		{"a b", false},
		{"a/b", false},
		{"a%2f", false},
		{"..", false},
		{strings.Repeat("a", protocol.MaxIDLen), true},
		{strings.Repeat("a", protocol.MaxIDLen+1), false},
	}
	for _, tc := range tests {
		if got := ValidName(tc.name); got != tc.ok {
			t.Errorf("ValidName(%q) = %v", tc.name, got)
		}
	}
}

func TestAddCredentials(t *testing.T) {
	dir := t.TempDir()
	tok, err := AddDevice(dir, "pi1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, DeviceTokenPrefix) || len(tok) != len(DeviceTokenPrefix)+43 {
		t.Fatalf("token %q", tok)
	}
	if _, err := AddDevice(dir, "pi1"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := AddDevice(dir, "bad/name"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
	key, err := AddClient(dir, "pi1") // clients and devices are separate namespaces
	if err != nil || !strings.HasPrefix(key, ClientKeyPrefix) {
		t.Fatalf("client: %q %v", key, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, credentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), tok) || strings.Contains(string(raw), key) || !strings.Contains(string(raw), hashSecret(tok)) {
		t.Fatal("credentials file must hold hashes, not secrets")
	}
	if fi, _ := os.Stat(filepath.Join(dir, credentialsFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	devs, err := ListDevices(dir)
	if err != nil || len(devs) != 1 || devs[0].Name != "pi1" {
		t.Fatalf("list %+v %v", devs, err)
	}
}

func TestAddCredentialsConcurrently(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := AddDevice(dir, "d"+string(rune('a'+i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	devs, err := ListDevices(dir)
	if err != nil || len(devs) != 8 {
		t.Fatalf("%d devices, %v: the lock must serialize updates", len(devs), err)
	}
}

func TestCredentialsReloadWhileRunning(t *testing.T) {
	e := newEnv(t)
	tok, err := AddDevice(e.cfg.DataDir, "late")
	if err != nil {
		t.Fatal(err)
	}
	conn, resp, err := dialRaw(e, tok, []string{protocol.Version})
	if err != nil {
		t.Fatalf("new device refused (%v): %v", resp.Status, err)
	}
	conn.Close()
	if st, body := e.do("GET", "/v1/devices/late", nil); st != 200 {
		t.Fatalf("%d %s", st, body)
	}
	// A new client key works at once too.
	key, err := AddClient(e.cfg.DataDir, "cli")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.srv.AuthenticateClient(key); !ok {
		t.Fatal("new client key refused")
	}
}

// TestCredCacheSeesEveryChange checks that each way the file changes under
// a running relay shows on the next call: replaced by rename (the admin
// commands), rewritten in place (an editor), deleted, created again.
func TestCredCacheSeesEveryChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, credentialsFile)
	tokA, err := AddDevice(dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCredCache(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	want := func(step, tok, dev string) {
		t.Helper()
		got, ok := c.device(tok)
		if dev == "" && ok {
			t.Fatalf("%s: token of %q still accepted", step, got)
		}
		if dev != "" && got != dev {
			t.Fatalf("%s: token refused (got %q, %v), want %q", step, got, ok, dev)
		}
	}
	want("loaded", tokA, "a")

	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := AddDevice(dir, "b")
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); os.SameFile(before, fi) {
		t.Fatal("AddDevice should replace the file by rename")
	}
	want("replaced by rename", tokB, "b")

	// An editor drops device a, writing the same file.
	before, _ = os.Stat(path)
	creds, err := readCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	creds.Devices = slices.DeleteFunc(creds.Devices, func(e credEntry) bool { return e.Name == "a" })
	b, err := json.MarshalIndent(creds, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); !os.SameFile(before, fi) {
		t.Fatal("the edit should keep the file")
	}
	want("edited in place", tokA, "")
	want("edited in place", tokB, "b")

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	want("deleted", tokB, "")

	tokC, err := AddDevice(dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	want("created again", tokC, "c")
	want("created again", tokB, "")
}

// A credentials file that cannot be read is reported once, not on every
// authentication and every sweep (four times a second), and its repair is
// reported too; the credentials in force meanwhile stay the last good ones.
func TestCredCacheReportsBrokenFileOnce(t *testing.T) {
	dir := t.TempDir()
	tok, err := AddDevice(dir, "a")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	c, err := newCredCache(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	path := filepath.Join(dir, credentialsFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if dev, ok := c.device(tok); !ok || dev != "a" {
			t.Fatalf("token refused while the file is broken: %q %v", dev, ok)
		}
	}
	if n := strings.Count(logs.String(), "credentials not reloaded"); n != 1 {
		t.Fatalf("broken file reported %d times, want once:\n%s", n, &logs)
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	c.device(tok)
	c.device(tok)
	if n := strings.Count(logs.String(), "credentials reloaded"); n != 1 {
		t.Fatalf("repair reported %d times, want once:\n%s", n, &logs)
	}
}
