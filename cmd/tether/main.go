// Command tether is the device-A command-line client of a tether relay.
//
//	tether devices
//	tether call pi-1 gpio.write pin=GPIO17 level=high
//	tether call pi-1 i2c.tx bus=1 addr=0x48 write=00 read:=2
//	tether call --async pi-1 sys.ping
//	tether get ID | cancel ID | pending pi-1 | watch pi-1
//
// Exit codes: 0 succeeded, 1 the request failed, expired or was canceled,
// 2 usage or connection error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

var version = "dev"

const usage = `usage: tether [--relay URL] [--key KEY] COMMAND [args]

commands:
  devices [--json]                 list devices, online state and last seen
  call DEVICE METHOD [key=value…]  call a method and print its result
       --json        print the whole request object as JSON
       --async       print the request id and return at once
       --timeout D   request timeout (default: the relay's)
       --idempotent  allow a re-run after an agent crash
       --idempotency-key K  the call's key (default: a new one); the relay
                     answers a call with a key it has seen with that request,
                     so running the same call again does not run it twice
       --params JSON params as a JSON object (key=value words are merged in)
  get ID [--wait D] [--json]       print a request (its result once finished)
  pending DEVICE [--json]          list the requests the device has yet to finish
  cancel ID [--json]               cancel a request
  watch DEVICE [--json]            follow events and presence until interrupted

params: key=value sends the string "value"; key:=JSON sends raw JSON
(read:=2, on:=true, addr:=0x48 is the number 72), e.g.
  tether call pi-1 i2c.tx bus=1 addr=0x48 write=00 read:=2

--relay defaults to $TETHER_RELAY, then http://127.0.0.1:8080 (ws:// works too);
--key defaults to $TETHER_KEY.
exit codes: 0 succeeded (or still running), 1 failed/expired/canceled,
            2 usage or connection error
`

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &exitError{2, fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("tether", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	relayURL := fs.String("relay", getenv("TETHER_RELAY"), "relay base URL (env TETHER_RELAY)")
	key := fs.String("key", getenv("TETHER_KEY"), "client key (env TETHER_KEY)")
	showVersion := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "tether: %v\n%s", err, usage)
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "tether", version)
		return 0
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if *relayURL == "" {
		*relayURL = "http://127.0.0.1:8080"
	}
	base, err := baseURL(*relayURL)
	if err != nil {
		fmt.Fprintf(stderr, "tether: %v\n", err)
		return 2
	}
	c := &client{base: base, key: *key, out: stdout, errOut: stderr}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "devices":
		err = c.devices(ctx, rest)
	case "call":
		err = c.call(ctx, rest)
	case "get":
		err = c.get(ctx, rest)
	case "pending":
		err = c.pending(ctx, rest)
	case "cancel":
		err = c.cancel(ctx, rest)
	case "watch":
		err = c.watch(ctx, rest)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageErr("unknown command %q", cmd)
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) { // COMMAND --help
		fmt.Fprint(stdout, usage)
		return 0
	}
	// Printed after the relay's own words, which cannot know that no key
	// was sent.
	if he := (*httpError)(nil); *key == "" && errors.As(err, &he) && he.status == http.StatusUnauthorized {
		defer fmt.Fprintln(stderr, "tether: no client key given: set --key or TETHER_KEY (tether-relay client add NAME prints one)")
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != errQuiet {
			fmt.Fprintln(stderr, "tether:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "tether:", err)
	return 2
}

// errQuiet marks an exit whose reason was already printed.
var errQuiet = errors.New("")
