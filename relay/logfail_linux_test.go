package relay

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tetherhq/tether/protocol"
)

// runChild runs test name again in a child process with env set, so that a
// process-wide setting (a resource limit) touches nothing else.
func runChild(t *testing.T, name string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

// copyTree copies the regular files of src (one level of subdirectories) to
// dst: the state a crash of the process (kill -9, OOM, panic) leaves, since
// the page cache keeps every write, synced or not.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		if strings.HasSuffix(p, ".lock") {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A commit of the request log that fails is reported as not stored: the
// hub then forgets a never-delivered submit "as if it was never
// submitted" (hub.store) and the client gets a plain error. So the records
// of the failed group that reached the file must not come back after a
// crash (before the checkpointer has moved past the sick file, or while
// it cannot), or the request the client was told failed would be
// delivered after all. Here the failed write is a short one (file size
// limit, as ENOSPC on a copy-on-write filesystem would make it): the
// first record of the group lands whole, the second does not, and the
// write returns an error.
func TestFailedLogAppendNotReplayed(t *testing.T) {
	if os.Getenv("TETHER_TEST_CHILD") == "" {
		runChild(t, "TestFailedLogAppendNotReplayed", "TETHER_TEST_CHILD=1", "TETHER_TEST_DIR="+t.TempDir())
		return
	}
	dir := os.Getenv("TETHER_TEST_DIR")
	var lim syscall.Rlimit
	must(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim))
	unlimited := lim
	lim.Cur = walFileSize
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip("setrlimit:", err)
	}
	must(t, os.MkdirAll(filepath.Join(dir, "live"), 0o700))
	st := openTestStore(t, filepath.Join(dir, "live"))
	w := st.reqs
	w.cpMu.Lock() // no checkpoint runs while the crash is staged
	locked := true
	defer func() {
		if locked {
			w.cpMu.Unlock()
		}
		st.abandon()
	}()

	a := testRequest("a", 1, protocol.StateQueued)
	b := testRequest("b", 1, protocol.StateQueued)
	b.Params = []byte(`"` + strings.Repeat("y", 200) + `"`)
	aLen := int64(len(appendWALRecord(nil, 0, walEntry{id: "a", val: encodeRequest(&a)})))

	// Fill the file to just past a's record short of its end.
	w.mu.Lock()
	size := w.size
	w.mu.Unlock()
	gap := aLen + 10
	fill := walFileSize - gap - size - walHeader - 3 - int64(len("filler"))
	val := make([]byte, fill)
	binary.BigEndian.PutUint64(val, 1)
	copy(val[8:], `{"id":"filler","params":"`)
	for i := 8 + len(`{"id":"filler","params":"`); i < len(val)-2; i++ {
		val[i] = 'x'
	}
	copy(val[len(val)-2:], `"}`)
	must(t, w.commit.do(walOp{entries: []walEntry{{id: "filler", val: val}}}))

	// One group: a's record fits, b's crosses the limit.
	err := st.putRequests([]storedRequest{a, b})
	if err == nil {
		t.Fatal("the write past the file size limit succeeded")
	}
	if !errors.Is(err, syscall.EFBIG) {
		t.Logf("commit error: %v", err)
	}
	wantState(t, st, "a", "") // not stored, as far as the running relay knows

	// The relay crashes now, before the checkpointer moved past the sick
	// file (it is woken, and takes a bbolt commit and a file rename).
	must(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &unlimited))
	crashed := filepath.Join(dir, "crashed")
	copyTree(t, filepath.Join(dir, "live"), crashed)
	w.cpMu.Unlock()
	locked = false

	st2 := openTestStore(t, crashed)
	defer st2.close()
	if r, gerr := st2.getRequest("a"); gerr == nil {
		t.Fatalf("request a, whose commit failed (%v), is back after a restart as %q", err, r.State)
	}
}

// The same with the failure every disk can give: the write lands in the
// page cache and fdatasync returns EIO (injected by strace, on every
// fdatasync of the log file in use: a reused one, whose only fdatasyncs
// are commits). The commit is reported failed, and a crash of the process
// before the checkpointer has moved past the sick file does not bring the
// request back.
func TestFailedLogSyncNotReplayed(t *testing.T) {
	if os.Getenv("TETHER_TEST_CHILD") == "" {
		strace, err := exec.LookPath("strace")
		if err != nil {
			t.Skip("needs strace for the fault injection")
		}
		dir := t.TempDir()
		// File 1 is written at the first open and kept at its clean
		// close; the second open marks 3 in bbolt and reuses it as 4.
		walFile := walName(filepath.Join(dir, "live", "wal"), 4)
		cmd := exec.Command(strace, "-f", "-qq", "-o", "/dev/null", "-P", walFile,
			"-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO",
			os.Args[0], "-test.run=^TestFailedLogSyncNotReplayed$", "-test.v")
		cmd.Env = append(os.Environ(), "TETHER_TEST_CHILD=1", "TETHER_TEST_DIR="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		t.Logf("child:\n%s", out)
		return
	}
	dir := os.Getenv("TETHER_TEST_DIR")
	live := filepath.Join(dir, "live")
	must(t, os.MkdirAll(live, 0o700))
	must(t, openTestStore(t, live).close())
	st := openTestStore(t, live)
	w := st.reqs
	w.mu.Lock()
	seq := w.seq
	w.mu.Unlock()
	if seq != 4 {
		st.close()
		t.Fatalf("the log reopened on file %d; the injection is set for file 4", seq)
	}
	w.cpMu.Lock()
	locked := true
	defer func() {
		if locked {
			w.cpMu.Unlock()
		}
		st.abandon()
	}()
	err := st.putRequests([]storedRequest{testRequest("a", 1, protocol.StateQueued)})
	if err == nil {
		t.Skip("no fault injected (not run under strace)")
	}
	t.Logf("commit error: %v", err)
	wantState(t, st, "a", "")

	crashed := filepath.Join(dir, "crashed")
	copyTree(t, live, crashed)
	w.cpMu.Unlock()
	locked = false

	st2 := openTestStore(t, crashed)
	defer st2.close()
	if r, gerr := st2.getRequest("a"); gerr == nil {
		t.Fatalf("request a, whose commit failed (%v), is back after a restart as %q", err, r.State)
	}
}
