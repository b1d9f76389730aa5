// Package protocol defines tether.v1, the wire protocol between a
// tether-agent (device B) and a tether-relay, and the request object that
// device-A clients see.
//
// Every frame is one JSON object in a WebSocket text frame with a "type"
// field. Decode validates a frame completely (size, type, required fields,
// value ranges) before returning it, so code that receives a Message can use
// it without further checks. SPEC.md in this directory is the normative
// description; this package is its reference implementation.
//
// The package depends on the standard library only.
package protocol
