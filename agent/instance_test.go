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

// A state directory removed under a running agent is made again, with
// the journal rewritten from the agent's state: it still answers for what
// ran, so it keeps its instance. Under a new one, the relay would end
// those requests interrupted at the next start, and drop the results the
// journal kept for them.
func TestRepairedStateKeepsItsInstance(t *testing.T) {
	dir := t.TempDir()
	exec := &countingExec{}
	a, s := attachedAgent(t, dir, exec)
	inst := a.hello().Instance
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	runRequest(t, a, s, "r1") // fails: finds the journal gone
	if res := runRequest(t, a, s, "r2"); res.State != "succeeded" {
		t.Fatalf("r2 after the repair: %s", res.State)
	}
	a.Close()
	b, _ := attachedAgent(t, dir, exec)
	if got := b.hello().Instance; got != inst {
		t.Fatalf("instance after a restart on the repaired directory: %s, want %s", got, inst)
	}
}
