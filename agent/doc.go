// Package agent is the device side of tether: it keeps one outbound
// WebSocket session with a relay alive through any network weather, pulls
// requests only when it has a free worker slot, runs them on an Executor
// (the board) and sends each result back asynchronously, keeping results
// and events in an outbox until the relay acknowledges them.
//
// The package never imports the hardware layer; it declares the small
// Executor interface it needs and the board satisfies it.
//
// Goroutine ownership: Run owns everything. It starts one session at a time
// (a reader and a writer goroutine per connection) and one goroutine per
// running request, except instant pure ones (see Instant), which run on
// the reader, and returns only after all of them have stopped.
package agent
