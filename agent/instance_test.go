package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The instance an agent names in its hello is its journal's: the same
// after a restart on the same state directory, a new one once the journal
// is gone (its answers for what ran went with it), and a new one for
// every agent without a state directory.
func TestHelloNamesTheJournalsInstance(t *testing.T) {
	dir := t.TempDir()
	start := func(state string) string {
		t.Helper()
		a, err := New(Config{Relay: "ws://127.0.0.1:1", Token: "t", StateDir: state}, &countingExec{})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		inst := a.hello().Instance
		if len(inst) != 16 {
			t.Fatalf("instance %q", inst)
		}
		return inst
	}
	first := start(dir)
	if again := start(dir); again != first {
		t.Errorf("after a restart: instance %s, want %s", again, first)
	}
	if err := os.Remove(filepath.Join(dir, journalFile)); err != nil {
		t.Fatal(err)
	}
	if fresh := start(dir); fresh == first {
		t.Error("a new journal kept the old one's instance")
	}
	if a, b := start(""), start(""); a == b {
		t.Error("two agents without a state directory have one instance")
	}
}
