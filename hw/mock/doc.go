// Package mock builds a simulated Raspberry Pi as an *hw.Board, for running
// the agent on a laptop, for tests and for demos. It is the same hw.Board as
// on real hardware, built with hw.NewBoard over simulated periph objects.
//
// The simulated header:
//
//   - GPIO2–GPIO27 by their periph names, except the PWM pins below. Every
//     pin is an output, initially low, that reads back what was written,
//     except GPIO27, which is an input (no pull) reporting both edges.
//     (A real board fixes directions in the config too, so writing an input
//     is refused here as it would be there.)
//   - GPIO17 is wired to GPIO27: writing 17 changes what 27 reads and makes
//     Run emit gpio.edge events for GPIO27.
//   - PWM on GPIO12, GPIO13, GPIO18 and GPIO19 (pwm.set only).
//   - I2C bus "1": a TMP102-style temperature sensor at 0x48 and a
//     24C32-style 4 KiB EEPROM at 0x50.
//   - SPI port "SPI0.0" loops MOSI back to MISO.
//
// Resource names are the hardware names: pin "GPIO17", bus "1", port
// "SPI0.0".
package mock
