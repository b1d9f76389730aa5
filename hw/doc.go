// Package hw is tether's hardware layer: it exposes the GPIO pins, I2C buses,
// SPI ports and PWM pins named in a Config as request handlers, and reports
// input edges as events.
//
// A Board is built either from real hardware with Open (periph.io host
// drivers) or from already-opened periph objects with NewBoard, which is what
// the simulated board in hw/mock and the tests use. Only what the Config names
// can be touched; everything else on the board is invisible to requests.
//
// # Methods
//
//	gpio.read  {pin}                      → {"level": "high"|"low"}
//	gpio.write {pin, level}               → {}          outputs only
//	gpio.pulse {pin, level, duration}     → {}          drive, wait, restore
//	pwm.set    {pin, duty, frequency}     → {}          pins configured under pwm
//	i2c.tx     {bus, addr, write, read}   → {"read": hex}
//	spi.tx     {port, write, read}        → {"read": hex}
//	sys.info   {}                         → host, uptime, load, memory, temperature
//	sys.ping   any                        → the params, unchanged ({} when absent)
//
// Parameter forms: levels are "high"/"low", true/false or 1/0; durations are Go
// duration strings ("250ms") or a number of milliseconds; duty is a fraction
// 0..1 or a percentage string ("50%"); frequency is a number of hertz or a
// string with a unit ("1kHz"); bytes are hex strings ("0a1b", an optional 0x
// prefix is allowed); I2C addresses are numbers or strings ("0x48"). Unknown
// parameter names are rejected so that a typo does not silently do nothing.
//
// spi.tx is full duplex: it clocks max(len(write), read) bytes, pads write with
// zeros, and returns every byte clocked in.
//
// Levels in requests and events are logical: a pin configured active_low is
// inverted between the request and the wire.
//
// # Errors
//
// Execute reports failures as *protocol.Failure: bad_params (malformed or out
// of range parameters, naming the field), not_found (no resource of that
// name), not_permitted (the resource exists but not for this use: writing an
// input, an I2C address outside the bus's allowlist, a name of another kind),
// hw_error (the peripheral failed or is unavailable on this board),
// unknown_method, and timeout (the request's deadline passed while it ran). A
// canceled context is returned as ctx.Err() and is never reported as a
// failure. Each bus, SPI port and pin is serialised by a context-aware lock, so
// a request waiting for a busy peripheral gives up when its deadline passes.
//
// # Events
//
// Inputs configured with an edge are watched by Run and reported as
// "gpio.edge" events with data {"pin", "level", "edge"}. Debouncing is done by
// time: after an edge the watcher waits the configured debounce, reads the
// settled level and reports it only if it differs from the last one reported.
// Without a debounce every edge is reported: an edge that finds the level
// where it was last reported was a pulse over before the pin was read, and
// both of its edges are reported.
//
// An output is never read from its pin: on the kernel's GPIO character
// device that turns it into an input. gpio.read of an output, and the level
// a pulse restores, are the level the output was last driven to. Outputs
// are driven to their initial level and PWM pins low when the board opens,
// and to their safe level (PWM low) by Halt.
// (periph's gpioutil.Debounce sleeps without a way to stop it, which would
// delay shutdown, so it is not used.)
package hw
