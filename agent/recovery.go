package agent

import (
	"sort"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// openJournal opens the journal in the state directory, rebuilds the
// outbox from it and compacts it. A request found started without a result
// was interrupted by a crash or power cut: it is reported failed with code
// interrupted instead of being run again, unless it was idempotent.
func (a *Agent) openJournal() error {
	j, recs, dropped, err := openJournal(a.cfg.StateDir)
	if err != nil {
		return err
	}
	if dropped > 0 {
		a.log.Warn("journal: dropped a torn or corrupt tail", "bytes", dropped)
	}
	a.j = j

	type entry struct {
		started, idem, acked bool
		res                  *protocol.Result
		t                    int64
	}
	byID := make(map[string]*entry)
	var order []string
	// owed is an event recorded, and when it happened: wall clock, Unix
	// ms (0: not recorded).
	type owed struct {
		ev   *protocol.Event
		made int64
	}
	events := make(map[uint64]owed)
	fresh := make(map[uint64]bool) // events recorded in a span no welcome ended
	inSpan := false
	var maxSeq, evAcked uint64
	get := func(id string) *entry {
		e := byID[id]
		if e == nil {
			e = &entry{}
			byID[id] = e
			order = append(order, id)
		}
		return e
	}
	for _, r := range recs {
		switch r.Op {
		case opStart:
			e := get(r.ID)
			e.started, e.idem, e.t = true, r.Idem, r.Time
		case opResult:
			if e := get(r.ID); e.res == nil && r.Result != nil {
				e.res, e.t = r.Result, r.Time
			}
		case opAck:
			get(r.ID).acked = true
		case opEvent:
			if r.Event != nil {
				events[r.Event.Seq] = owed{r.Event, r.Time}
				fresh[r.Event.Seq] = inSpan
				maxSeq = max(maxSeq, r.Event.Seq)
			}
		case opBoot:
			inSpan = true
		case opEventAck:
			evAcked = max(evAcked, r.Seq)
		case opEventMove:
			moved := make(map[uint64]owed, len(events))
			for s, o := range events {
				if s >= r.From {
					e := *o.ev
					e.Seq = s + r.Shift
					o.ev = &e
				}
				moved[o.ev.Seq] = o
			}
			events = moved
			if maxSeq >= r.From {
				maxSeq += r.Shift
			}
			evAcked = max(evAcked, r.Seq)
			clear(fresh) // a welcome numbered (and may have sent) them all
			inSpan = false
		}
	}

	now := time.Now()
	interrupted := 0
	for _, id := range order {
		e := byID[id]
		if e.res == nil {
			if !e.started || e.idem {
				continue // idempotent: forgotten, so a redelivery runs it again
			}
			e.res = &protocol.Result{ID: id, State: protocol.StateFailed,
				Error: protocol.Errorf(protocol.CodeInterrupted, "agent restarted while the request ran; not run again")}
			e.t = now.UnixMilli()
			interrupted++
		}
		a.out.addResult(e.res, time.UnixMilli(e.t), false)
		a.out.markResultDurable(id)
		if e.acked {
			a.out.ack([]string{id}, 0)
		}
	}
	seqs := make([]uint64, 0, len(events))
	for s := range events {
		if s > evAcked {
			seqs = append(seqs, s)
		}
	}
	// sort.Slice rather than slices.Sort: tether-agent links sort.Slice
	// anyway (periph uses it), while slices.Sort on []uint64 is 6 KB of
	// code of its own in the armv6 build.
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, s := range seqs {
		a.out.keys++
		o := events[s]
		a.out.events = append(a.out.events, pendingEvent{ev: *o.ev, at: madeAt(now, o.made), durable: true, key: a.out.keys, fresh: fresh[s]})
	}
	a.out.nextSeq = max(maxSeq, evAcked) + 1
	if interrupted > 0 {
		a.log.Warn("requests interrupted by the last shutdown will be reported failed", "count", interrupted)
	}
	a.log.Info("journal replayed", "records", len(recs), "remembered", len(a.out.done), "owed", a.out.size())

	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.compactLocked(); err != nil {
		j.close() // lets go of the state directory
		return err
	}
	return nil
}

// trustedEventAge bounds the age an event recovered from the journal is
// given from the wall clock; see madeAt.
const trustedEventAge = 30 * 24 * time.Hour

// madeAt is when an event recovered from the journal happened, on this
// process's clock: now less the wall-clock time since it was recorded
// (ms, Unix). A board without a real-time clock may have booted since
// with its clock in 1970, or had it set by NTP meanwhile: an age that
// comes out negative or implausibly long is not believed, and the event
// counts as happening now, as an event recorded without a time does.
func madeAt(now time.Time, ms int64) time.Time {
	// In milliseconds: a time far ahead would overflow a Duration's
	// nanoseconds, and could wrap around to a plausible age.
	nowMs := now.UnixMilli()
	if ms <= 0 || ms > nowMs || nowMs-ms > trustedEventAge.Milliseconds() {
		return now
	}
	return now.Add(-time.Duration(nowMs-ms) * time.Millisecond)
}

// maybeCompactLocked rewrites the journal when it has grown past the
// threshold. The threshold follows the live state so a large outbox does
// not cause a rewrite after every request. The snapshot is taken now; the
// rewrite and its fsyncs run in the background, so requests, acks and
// results keep flowing meanwhile.
func (a *Agent) maybeCompactLocked() {
	if a.j != nil && a.j.failed() != nil {
		a.repairJournalLocked()
		return
	}
	if a.j == nil || a.j.fileSize() < a.compactAt || !a.j.startCompaction() {
		return
	}
	recs := a.snapshotLocked()
	a.compactions.Add(1)
	go func() {
		defer a.compactions.Done()
		live, err := a.j.finishCompaction(recs)
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.log.Error("journal compaction failed", "err", err)
			// Tried again once the file has grown by as much again,
			// not at the next record: a full disk would otherwise
			// have every record snapshot the state and fail anew.
			a.compactAt = max(a.compactAt, a.j.fileSize()+a.cfg.CompactBytes)
			return
		}
		// The bar follows the live state the rewrite wrote, not the
		// file: what was carried in meanwhile (records added during the
		// rewrite, most of them stale by now under a flood of events)
		// must not raise it, or the file would keep twice that much for
		// good. Past the bar, the next record compacts it away.
		a.compactAt = max(a.cfg.CompactBytes, 2*live)
	}()
}

// repairEvery is the least time between two rewrites of a journal that
// keeps failing.
const repairEvery = time.Second

// repairJournalLocked rewrites the journal from the agent's state after a
// write to it failed (a full disk, an I/O error, its file or directory
// removed). While it has failed, requests that touch hardware are refused,
// since their start cannot be recorded; the state in memory holds
// everything the journal lost, so once the disk takes the rewrite they run
// again, without a restart.
func (a *Agent) repairJournalLocked() {
	if a.j == nil || a.j.failed() == nil {
		return
	}
	// A rewrite holds the agent's lock while it writes the whole state:
	// on a disk that keeps failing, not more than once a second.
	now := time.Now()
	if now.Before(a.repairAt) {
		return
	}
	if a.j.repair(a.snapshotLocked()) != nil {
		a.repairAt = now.Add(repairEvery)
		return // each request refused meanwhile logs why
	}
	a.compactAt = max(a.cfg.CompactBytes, 2*a.j.fileSize())
	// The journal answers for what ran, as before: it keeps its instance,
	// whose file went if the directory did (then a restart would name a
	// new one, and the relay end interrupted what the journal answers for).
	stateInstance(a.cfg.StateDir, true, a.instance)
	a.log.Warn("journal rewritten after a failure; requests run again")
}

// compactLocked rewrites the journal with the current state at once; it
// is used at start-up, before anything else runs.
func (a *Agent) compactLocked() error {
	if err := a.j.compact(a.snapshotLocked()); err != nil {
		return err
	}
	for i := range a.out.results {
		a.out.results[i].durable = true
	}
	for i := range a.out.events {
		a.out.events[i].durable = true
	}
	a.compactAt = max(a.cfg.CompactBytes, 2*a.j.fileSize())
	return nil
}

// snapshotLocked returns the minimal records for the current state:
// running requests, remembered results with their ack state, and owed
// events.
func (a *Agent) snapshotLocked() []record {
	var recs []record
	add := func(r record) { recs = append(recs, r) }
	now := time.Now().UnixMilli()
	for id, j := range a.running {
		if !j.pure {
			add(record{Op: opStart, ID: id, Idem: j.req.Idempotent, Time: now})
		}
	}
	for _, id := range a.out.finishedOrder() {
		e := a.out.done[id]
		if e.pure {
			continue // kept in memory only, as its start was
		}
		add(record{Op: opResult, ID: id, Result: e.res, Time: e.at.UnixMilli()})
		if !a.out.unacked[id] {
			add(record{Op: opAck, ID: id})
		}
	}
	floor := a.out.nextSeq - 1
	booted := a.numbered // a span is open until the first welcome
	for _, pe := range a.out.events {
		if pe.fresh && !booted {
			add(record{Op: opBoot})
			booted = true
		}
		ev := pe.ev
		add(record{Op: opEvent, Event: &ev, Time: pe.at.UnixMilli()})
	}
	if !booted {
		// Events this process makes before its first welcome are
		// recorded after this, in the span it opens.
		add(record{Op: opBoot})
	}
	if len(a.out.events) > 0 {
		floor = a.out.events[0].ev.Seq - 1
	}
	// The acknowledged floor keeps event numbering increasing across
	// restarts even when no event is owed.
	if floor > 0 {
		add(record{Op: opEventAck, Seq: floor})
	}
	return recs
}
