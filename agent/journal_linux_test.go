package agent

import (
	"fmt"
	"syscall"
	"testing"
)

// On a full disk (here, a file size limit) the zeros written ahead may
// not fit where a record does: the record is still written and synced,
// and the journal goes on.
func TestJournalRecordFitsWhereZerosDoNot(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skip(err)
	}
	limit := uint64(journalChunk + journalChunk/2)
	if old.Cur < limit {
		t.Skipf("file size limit already %d", old.Cur)
	}
	j, _, _, err := openJournal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	lim := old
	lim.Cur = limit
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skip(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
	// Records past the first chunk need a second one of zeros, which
	// passes the limit; every record below the limit must still land.
	for i := 0; j.fileSize() < int64(limit)-1024; i++ {
		id := fmt.Sprint("r", i)
		if err := j.wait(j.add(record{Op: opResult, ID: id, Result: okResult(id)})); err != nil {
			t.Fatalf("record %d, ending at %d of a %d-byte limit: %v", i, j.fileSize(), limit, err)
		}
	}
}
