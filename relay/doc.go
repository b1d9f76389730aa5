// Package relay is the tether relay server: the middleman between device-A
// clients and tether-agents running on hardware (device B).
//
// A Server keeps one durable queue of requests per device in a bbolt
// database (DIR/relay.db), hands queued requests to the device's agent over
// the tether.v1 WebSocket (GET /v1/agent) only against the credits the agent
// granted with pull frames, leases each delivered request to the session
// that received it, records the first result for every request, and serves
// the client REST API (/v1/devices, /v1/requests) with long-polling.
//
// Credentials live outside the database, in DIR/credentials.json, so that the
// admin commands (AddDevice, AddClient) work whether the relay runs or not:
// bbolt holds an exclusive lock on its file, a JSON file rewritten atomically
// under an flock does not. The running relay notices a changed file on the
// next authentication. Only SHA-256 hashes of secrets are stored.
//
// The same lock keeps other processes from copying the database while the
// relay runs, so a serving relay takes backups itself (Server.Backup), on
// request through a Unix socket in its data directory (AdminSocket); a
// directory no relay serves is copied by BackupDir. Restore unpacks a
// copy into a new directory and checks it.
//
// # Durability
//
// What the relay itself decides is committed (to the request log, below,
// or to bbolt) before anyone is told: a request before its id is returned
// to the submitter; a cancel, an expiry or an undeliverable verdict before
// it is reported; an event before its ack. Two kinds of write go behind the traffic instead, each
// because someone else already holds the truth durably:
//
//   - a delivery (state delivered, attempt count) is written behind the
//     request frame: after a crash the agent's journal stops a second run,
//     and every request recovered from a store that was not closed cleanly
//     counts as possibly run (never expired), which is stored with it
//     (maybe_ran) at that start, for later restarts to know;
//   - a result is passed to waiting clients as soon as it arrives and
//     committed behind that: the agent keeps it (journaled, for anything
//     that touches hardware) until the ack, and the ack follows the commit.
//
// A submit's commit also overlaps its delivery: the request is queued
// while it is written, and the id goes out once it is on disk.
//
// Changes to requests are committed to the request log (wal.go, DIR/wal/):
// one append and one fdatasync to a file written in advance, where a bbolt
// commit costs a write of every page from the root to the changed leaves
// and two fdatasyncs. A checkpointer moves the log into bbolt once a second
// in one transaction; a relay that starts replays what the log holds into
// bbolt before it reads anything. Devices and events are committed to
// bbolt directly.
//
// Commits are group-committed (commit.go): a lone one runs at once,
// concurrent ones share fsyncs, and the writes nobody waits for (deliveries,
// results before their ack) ride along with the next commit someone waits
// for. Each stored request carries a revision number and a commit never
// overwrites a newer revision, so commits of the same request issued from
// different goroutines, or deferred, cannot reorder. The in-memory state is
// the authority for decisions (first result wins, queue bound).
//
// On start the queues are rebuilt from the store: delivered requests become
// queued again at the head, in submission order, followed by the queued ones.
//
// # Redelivery
//
// When a session ends, its leased requests return to the head of the queue
// in submission order. A request whose attempts have reached MaxAttempts is
// not sent again: when it comes up for delivery it fails with code
// undeliverable. An agent that reconnects and lists request ids in
// hello.running gets them leased back without a resend and without spending
// credits.
//
// # Goroutines
//
// An idle agent session holds no goroutine: with tens of thousands of
// agents connected, two goroutine stacks per session would be most of the
// relay's memory. One loop goroutine per Server (reactor.go) watches the
// agents' connections with an epoll instance of its own, which Go's
// network poller watches in turn, so the loop waits parked like any
// goroutine and holds no thread; it also runs the sessions' timers. When
// a connection becomes readable it starts a read turn, which reads the
// frames already buffered and hands the connection back; every PingPeriod
// it queues a ping, and it drops a session whose read deadline passed
// with no read under way (a read under way, mid-frame, is bounded by the
// connection's own deadline). A writer goroutine runs only while something is queued:
// control frames (welcome, acks, errors) on a bounded queue, pongs,
// pings, and requests and cancels pulled from the hub when it is poked.
// At most one read turn and one writer run per session. Both run on the
// loop's workers (workers.go): goroutines that take the next task with
// their stacks already grown, and end once idle through a whole second (one to two). Stop
// starts a finisher that sends the close frame, waits for the rest and detaches
// the session. TLS connections, and every connection on systems without
// epoll, keep one reader goroutine each (decrypted data can wait inside
// crypto/tls where the socket does not show it). /v1/client connections
// keep one reader and one writer each, and one goroutine per call, which
// commits the submit and then waits for the result.
//
// A result's commit waits for nobody: it rides on the next commit a
// caller waits for (commit.go), and once that caller has its answer, one
// goroutine settles the group's requests and queues the agents' acks, as
// for deliveries. No goroutine is parked per result in flight; only a
// duplicate result, acked once the first is committed, holds a worker.
//
// A goroutine that hands work to another and then blocks in a system call
// yields first (runtime.Gosched): a submit before its fdatasync. The work
// it readied then starts on the same processor at once, instead of
// waiting for another thread to wake and take it, which costs 50–70 µs on
// a small virtual machine. For the same reason the loop never blocks in
// epoll_wait: a thread blocked there kept its processor, and goroutines
// readied just before could wait on it for 100–200 µs.
//
// # Garbage
//
// The frames sent for every request (to agents, to /v1/client
// connections, REST answers) are encoded into buffers lent by a pool and
// given back once written (framebuf.go); frames that wait in a client's
// queue come from a pool of small buffers of their own, so that one
// large frame elsewhere does not leave them in kilobytes each. Stored
// revisions are built the same way and copied out at their exact size. tether-relay serve keeps
// HeapFloor of room between the live heap and the next collection
// (internal/heapfloor).
//
// Run owns the sweeper (expiry of queued requests, result retention) and,
// on return, has waited for every session to end.
package relay
