// Package e2e holds tether's end-to-end tests: a real relay and real agents
// talking over loopback WebSockets, in-process and as separate processes
// that are killed and restarted. It has no non-test code.
package e2e
