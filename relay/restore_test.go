package relay

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// Restore makes a data directory a relay starts on, from a copy, and
// says what it holds.
func TestRestoreRoundTrip(t *testing.T) {
	e := newEnv(t)
	rec := e.submit(protocol.Submit{Method: "m"})
	var buf bytes.Buffer
	if err := e.srv.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	info, err := Restore(bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Requests != 1 || info.Devices != 1 || info.Clients != 1 || info.Bytes == 0 {
		t.Errorf("restored %+v, want 1 request, 1 device, 1 client", info)
	}
	r := &env{t: t, cfg: testConfig(dir), key: e.key, token: e.token}
	r.start()
	t.Cleanup(r.stop)
	if got := r.record(rec.ID, ""); got.State != protocol.StateQueued {
		t.Errorf("request restored as %s", got.State)
	}
}

// tarOf builds a tar of the named files.
func tarOf(t *testing.T, files ...[2]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f[0], Mode: 0o600, Size: int64(len(f[1]))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f[1]))
	}
	tw.Close()
	return buf.Bytes()
}

// Restore refuses a directory in use and anything that is not a whole,
// sound copy, and leaves the directory empty when it refuses a copy.
func TestRestoreRefuses(t *testing.T) {
	e := newEnv(t)
	var good bytes.Buffer
	if err := e.srv.Backup(context.Background(), &good); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(bytes.NewReader(good.Bytes()), e.cfg.DataDir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore into a relay's directory: %v", err)
	}
	db, err := os.ReadFile(filepath.Join(unpackBackup(t, good.Bytes()), backupDB))
	if err != nil {
		t.Fatal(err)
	}
	damaged := bytes.Clone(db)
	for i := 4096 * 2; i < len(damaged); i += 4096 { // every page but the two meta pages
		copy(damaged[i:i+16], "garbage garbage!")
	}
	for name, copyOf := range map[string][]byte{
		"cut short":         good.Bytes()[:len(good.Bytes())/2],
		"no relay.db":       tarOf(t, [2]string{"credentials.json", "{}"}),
		"another file":      tarOf(t, [2]string{"relay.db", string(db)}, [2]string{"../../etc/passwd", "x"}),
		"relay.db twice":    tarOf(t, [2]string{"relay.db", string(db)}, [2]string{"relay.db", string(db)}),
		"not a bbolt store": tarOf(t, [2]string{"relay.db", strings.Repeat("x", 8192)}),
		"a damaged store":   tarOf(t, [2]string{"relay.db", string(damaged)}),
		"bad credentials":   tarOf(t, [2]string{"relay.db", string(db)}, [2]string{"credentials.json", "{"}),
	} {
		dir := filepath.Join(t.TempDir(), "restored")
		_, err := Restore(bytes.NewReader(copyOf), dir)
		t.Logf("%s: %v", name, err)
		if err == nil {
			t.Errorf("%s: restored", name)
			continue
		}
		if des, _ := os.ReadDir(dir); len(des) > 0 {
			t.Errorf("%s: left %d files behind", name, len(des))
		}
	}
}
