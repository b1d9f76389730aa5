package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Report is the outcome of a run. The four counters are defined in the
// package documentation; the rest is detail for a human.
type Report struct {
	Requests            int // acknowledged by the relay
	Faults              int // injected
	Lost                int
	DuplicateExecutions int
	Unresolved          int
	WrongState          int

	Seed          uint64
	FaultsByKind  map[string]int
	States        map[string]int // "succeeded", "failed/interrupted", …
	SubmitRetries int            // submits retried because nothing was stored
	SubmitResent  int            // submits sent again with their key after a lost answer
	SubmitUnknown int            // submits whose answer never came
	Redelivered   int            // requests delivered more than once
	ExecLines     int            // lines in the execution log
	ExecUnknown   int            // executed ids the client never learned
	PureReruns    int            // sys.ping requests run more than once (allowed)
	ExecMalformed int            // unparsable execution log lines
	// SlowRecoveries counts faults after which the device was not back
	// online within 20 s.
	SlowRecoveries int
	// UnexpectedExits lists relay or agent processes that exited without
	// being killed: a crash, which fails the run.
	UnexpectedExits []string
	// Problems describes the offending requests, a few per counter.
	Problems  []string
	DrainTime time.Duration
	Elapsed   time.Duration
	// Dir is the kept working directory (logs, journal, exec log), empty
	// when it was removed after a clean run.
	Dir string
}

// Line is the one-line summary.
func (r *Report) Line() string {
	return fmt.Sprintf("chaos: requests=%d faults=%d lost=%d duplicate_executions=%d unresolved=%d wrong_state=%d",
		r.Requests, r.Faults, r.Lost, r.DuplicateExecutions, r.Unresolved, r.WrongState)
}

// OK reports a clean run: every counter zero and no process crashed.
func (r *Report) OK() bool {
	return r.Lost == 0 && r.DuplicateExecutions == 0 && r.Unresolved == 0 && r.WrongState == 0 &&
		len(r.UnexpectedExits) == 0
}

// WriteDetail writes the breakdown behind Line.
func (r *Report) WriteDetail(w io.Writer) {
	fmt.Fprintf(w, "chaos detail: seed=%d elapsed=%v drain=%v\n", r.Seed, r.Elapsed.Round(time.Millisecond), r.DrainTime.Round(time.Millisecond))
	fmt.Fprintf(w, "  faults:   %s\n", formatCounts(r.FaultsByKind))
	fmt.Fprintf(w, "  states:   %s\n", formatCounts(r.States))
	fmt.Fprintf(w, "  submits:  retried=%d resent=%d submit_unknown=%d redelivered=%d\n", r.SubmitRetries, r.SubmitResent, r.SubmitUnknown, r.Redelivered)
	fmt.Fprintf(w, "  exec log: lines=%d exec_unknown=%d malformed=%d pure_reruns=%d\n", r.ExecLines, r.ExecUnknown, r.ExecMalformed, r.PureReruns)
	if r.SlowRecoveries > 0 {
		fmt.Fprintf(w, "  slow recoveries (not online 20s after a fault): %d\n", r.SlowRecoveries)
	}
	for _, e := range r.UnexpectedExits {
		fmt.Fprintf(w, "  UNEXPECTED EXIT: %s\n", e)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	if r.Dir != "" {
		fmt.Fprintf(w, "  logs, journal and exec log kept in %s\n", r.Dir)
	}
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// execEntry is what the execution log says about one id.
type execEntry struct {
	n       int
	methods []string
}

// readExecLog counts the lines "<id> <method>" per id.
func readExecLog(path string) (map[string]*execEntry, int, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, err
	}
	counts := make(map[string]*execEntry)
	malformed := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			malformed++
			continue
		}
		e := counts[f[0]]
		if e == nil {
			e = &execEntry{}
			counts[f[0]] = e
		}
		e.n++
		e.methods = append(e.methods, f[1])
	}
	return counts, malformed, sc.Err()
}

// maxProblems bounds the lines per counter in Report.Problems.
const maxProblems = 10

// check applies the definitions of the package documentation.
func check(rep *Report, sent []sent, recs map[string]protocol.Record, gone map[string]bool, execs map[string]*execEntry) {
	rep.Requests = len(sent)
	shown := map[string]int{}
	problem := func(counter *int, kind, id, format string, args ...any) {
		*counter++
		if shown[kind] < maxProblems {
			shown[kind]++
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: %s", kind, id, fmt.Sprintf(format, args...)))
		}
	}
	known := make(map[string]bool, len(sent))
	for _, s := range sent {
		known[s.id] = true
	}
	for id, e := range execs {
		rep.ExecLines += e.n
		if e.n > 1 && pureOnly(e.methods) {
			rep.PureReruns++
		} else if e.n > 1 {
			state := "never acknowledged"
			if rec, ok := recs[id]; ok {
				state = describe(rec)
			}
			problem(&rep.DuplicateExecutions, "duplicate", id, "executed %d times (%s)", e.n, state)
		}
		if !known[id] {
			rep.ExecUnknown++
		}
	}
	if extra := rep.ExecUnknown - rep.SubmitUnknown; extra > 0 {
		problem(&rep.WrongState, "wrong_state", "-", "%d executed ids were never submitted (only %d submits had unknown outcomes)", rep.ExecUnknown, rep.SubmitUnknown)
		rep.WrongState += extra - 1
	}

	for _, s := range sent {
		rec, ok := recs[s.id]
		n := 0
		var methods []string
		if e := execs[s.id]; e != nil {
			n, methods = e.n, e.methods
		}
		switch {
		case gone[s.id]:
			rep.States["gone"]++
			problem(&rep.Lost, "lost", s.id, "acknowledged %s but the relay no longer knows it (executed %d times)", s.method, n)
			continue
		case !ok:
			rep.States["unreadable"]++
			problem(&rep.Unresolved, "unresolved", s.id, "%s: the relay never answered for it during the drain", s.method)
			continue
		}
		key := rec.State
		if rec.Error != nil {
			key += "/" + rec.Error.Code
		}
		rep.States[key]++
		if rec.Attempts > 1 {
			rep.Redelivered++
		}
		if !protocol.Terminal(rec.State) {
			problem(&rep.Unresolved, "unresolved", s.id, "%s still %s after the drain (attempts %d, executed %d times)", s.method, rec.State, rec.Attempts, n)
			continue
		}
		if rec.State == protocol.StateSucceeded && n == 0 {
			problem(&rep.Lost, "lost", s.id, "%s succeeded but never executed", s.method)
			continue
		}
		if why := wrongState(s, rec, n, methods); why != "" {
			problem(&rep.WrongState, "wrong_state", s.id, "%s: %s", describe(rec), why)
		}
	}
}

// wrongState says why rec does not fit n executions, or "" if it does.
func wrongState(s sent, rec protocol.Record, n int, methods []string) string {
	for _, m := range methods {
		if m != s.method {
			return fmt.Sprintf("exec log has method %s for a %s request", m, s.method)
		}
	}
	if rec.ID != s.id || rec.Method != s.method {
		return fmt.Sprintf("relay returned %s %s for %s %s", rec.ID, rec.Method, s.id, s.method)
	}
	code := ""
	if rec.Error != nil {
		code = rec.Error.Code
	}
	switch rec.State {
	case protocol.StateSucceeded:
		if !sameJSON(rec.Result, expectedResult(s)) {
			return fmt.Sprintf("result %s is not the one asked for (params %s)", rec.Result, s.params)
		}
	case protocol.StateExpired:
		if n > 0 {
			return fmt.Sprintf("expired (never started) but executed %d times", n)
		}
	case protocol.StateCanceled:
		return "canceled, but nobody canceled it"
	case protocol.StateFailed:
		switch code {
		case protocol.CodeInterrupted, protocol.CodeUndeliverable:
			// Unknown outcome, honestly reported: 0 or 1 executions.
		case protocol.CodeTimeout:
			if n == 0 {
				return "timed out while running, but never executed"
			}
		default:
			return fmt.Sprintf("failure %q cannot come from this valid workload", code)
		}
	default:
		return "unknown state"
	}
	return ""
}

// pureOnly reports whether every logged execution was of sys.ping, which
// touches no hardware and is not journaled by the agent (agent.Pure): it
// may run again after a crash, by design.
func pureOnly(methods []string) bool {
	for _, m := range methods {
		if m != "sys.ping" {
			return false
		}
	}
	return true
}

func expectedResult(s sent) json.RawMessage {
	if s.method == "sys.ping" {
		return s.params
	}
	return json.RawMessage(`{}`)
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func describe(rec protocol.Record) string {
	s := rec.State
	if rec.Error != nil {
		s += " " + rec.Error.Code
	}
	return fmt.Sprintf("%s %s, attempts %d", rec.Method, s, rec.Attempts)
}
