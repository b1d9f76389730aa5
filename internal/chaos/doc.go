// Package chaos runs tether's delivery guarantees through a storm of faults
// and checks that nothing was lost, run twice or misreported.
//
// # Setup
//
// Run starts a real tether-relay process and a real tether-agent process on
// the simulated board (--board mock --state DIR --mock-exec-log FILE). The
// agent reaches the relay through an in-process fault-injecting TCP proxy
// (package faultproxy); clients submit straight to the relay's REST API, so
// a submit is never lost in the proxy. Clients submit Options.Requests
// non-idempotent requests (gpio.write and sys.ping, each with a distinct
// payload), released in step with the faults so the stream spans the whole
// storm. Every request has Options.Timeout except one in eight, which gets
// 0.5–3 s so that deadlines also pass during outages. Meanwhile a fault loop injects Options.Faults faults, chosen at
// random (every kind at least once) from a PCG generator seeded with
// Options.Seed, which the report prints so a run can be repeated:
//
//	agent-kill   kill -9 of the agent, restarted on the same journal
//	relay-kill   kill -9 of the relay, restarted on the same data
//	reset        TCP reset of the agent's connection
//	blackhole    the connection goes silent both ways without a FIN
//	             (half-open); both ends must notice within 2.5 pings
//	latency      20–150 ms (plus jitter) on every chunk, for a while
//	slow         writes trickle in pieces of 1–64 bytes with pauses
//	partial      every write split at random points
//
// Then a drain phase without faults waits (bounded by Options.Drain) until
// every request is terminal, the agent is stopped politely, and the checks
// run.
//
// # Client submissions
//
// Every submit carries an idempotency key of its own. A submit whose
// connection could not be made (the relay is down) or that was refused
// before being stored (429 queue_full, 503) is retried (retried in the
// detail). One that failed after the request was sent (the relay killed
// mid-answer, a 500) is sent again with the same key (resent): the relay
// answers with the request the key made if it stored one, and makes it
// otherwise. A keyed request reaches the agent only once it is stored, so
// a request the relay lost in a crash never ran, and the key cannot make
// an action run twice. A submit is sent until the relay answers with an
// id (a relay that kept failing would hold the run up until its end);
// only one still without an answer when the run ends stays unknown
// (submit_unknown, not counted as lost). Executions of ids the client
// never learned are counted as exec_unknown; more of them than
// submit_unknown means something ran that no client knows of (a first
// submission that ran, then a second one made by its key), which counts
// as wrong_state.
//
// # What the execution log proves
//
// The simulated board appends "<id> <method>" to the execution log and
// fsyncs it before it touches the (simulated) hardware, and the agent
// journals "started" (fsynced) before it calls the board for a gpio.write. So a line is
// written exactly when the hardware may have been touched, and no action
// can happen without a line. An agent killed mid-request leaves one of:
// no start record and no line (the relay redelivers it and it runs once),
// a start record without a line (reported interrupted, ran 0 times), or a
// line without a result (reported interrupted, ran once, possibly
// partially). With gpio.write and sys.ping and a few milliseconds of
// --mock-delay the last window is small but not empty, which is why
// interrupted allows 0 or 1 executions.
//
// # The counters
//
// For every request id the client got back (HTTP 202/200), with n its
// number of lines in the execution log:
//
//   - lost: the relay no longer knows the id (404), or says succeeded
//     while n == 0 (a success nobody performed: the outcome the client sees
//     was not what happened on the board).
//   - duplicate_executions: n > 1 for a gpio.write. Requests are not
//     idempotent, so no redelivery, relay restart or agent restart may run
//     one twice. sys.ping touches no hardware and the agent does not
//     journal it (agent.Pure), so it may run again after a crash; its
//     reruns are reported as pure_reruns and are not a failure. Its
//     result must still be its own payload.
//   - unresolved: still queued or delivered when the drain period ends.
//   - wrong_state: a terminal state that does not fit what happened:
//     expired with n > 0 (expired means "not started before its
//     deadline"), failed timeout with n == 0 (the deadline can only pass
//     while running if it ran), canceled (nobody cancels in this run), a
//     failure code the valid workload cannot produce (anything but
//     interrupted, undeliverable and timeout), a method in the log that
//     differs from the request's, or a succeeded result that is not the
//     one the request asked for (sys.ping must echo its own payload).
//     failed interrupted and failed undeliverable allow n of 0 or 1: the
//     relay or agent honestly does not know whether the action completed.
//
// duplicate_executions counts every gpio.write id with n > 1, whatever its state; the
// other three are exclusive, a request counting under the first of lost,
// unresolved and wrong_state that applies. The run fails when any counter
// is not zero.
package chaos
