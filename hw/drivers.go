package hw

// The host drivers tether supports. Importing them registers them with
// periph's driver registry; Open then initialises them with driverreg.Init.
//
// This is a deliberate subset of periph.io/x/host/v3's host.Init, which pulls
// in every board periph knows (Allwinner, BeagleBone, C.H.I.P., Odroid,
// Pine64...). Keeping to the GPIO character device (every current Linux
// board, including the Raspberry Pi 5), the Raspberry Pi's BCM283x
// registers and sysfs I2C/SPI keeps the armv6 agent within its size budget.
import (
	_ "periph.io/x/host/v3/bcm283x"
	_ "periph.io/x/host/v3/gpioioctl"
	_ "periph.io/x/host/v3/sysfs"
)
