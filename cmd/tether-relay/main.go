// Command tether-relay runs the tether relay server and manages its
// credentials.
//
//	tether-relay serve [--listen ADDR] [--data DIR]
//	tether-relay device add ID [--data DIR]
//	tether-relay device list [--data DIR]
//	tether-relay client add NAME [--data DIR]
//	tether-relay client list [--data DIR]
//	tether-relay backup --out FILE [--data DIR]
//	tether-relay restore --from FILE --data NEWDIR
//	tether-relay --version
//
// --data defaults to $TETHER_DATA. The add commands print the new secret as
// the last line of stdout; they work while the relay runs. So does backup,
// which the serving relay takes through its admin socket (DIR/admin.sock).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/tetherhq/tether/internal/heapfloor"
	"github.com/tetherhq/tether/relay"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `usage:
  tether-relay serve [--listen ADDR] [--data DIR] [--ping DURATION] [--log-level LEVEL]
                     [--allowed-origin URL]... [--metrics-allow CIDR,...|none]
                     [--tls-cert FILE --tls-key FILE [--client-ca FILE]]
                     [--admit-rate N] [--admit-burst N] [--max-conns N]
                     [--client-rate N] [--client-burst N] [--client-conns N] [--device-rate N] [--device-burst N]
                     [--rotate-grace DURATION]
  tether-relay device add ID [--data DIR]
  tether-relay device rotate ID [--grace DURATION] [--data DIR]
  tether-relay device revoke ID [--data DIR]
  tether-relay device list [--data DIR]
  tether-relay client add NAME [--devices PATTERNS] [--methods PATTERNS] [--data DIR]
  tether-relay client revoke NAME [--data DIR]
  tether-relay client list [--data DIR]
  tether-relay backup --out FILE|- [--data DIR]
  tether-relay restore --from FILE|- --data NEWDIR
  tether-relay --version

--data defaults to $TETHER_DATA.
`

func main() {
	os.Exit(exitCode(run(os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}

// exitCode reports err and returns the process's exit status: 0 for
// success and for --help, which has printed what was asked for, else 2.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintln(stderr, "tether-relay:", err)
	return 2
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "--version", "-version", "version":
		fmt.Fprintln(stdout, "tether-relay", version)
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "serve":
		return serve(args[1:], stderr)
	case "backup":
		return backup(args[1:], stdout, stderr)
	case "restore":
		return restore(args[1:], stdout, stderr)
	case "device", "client":
		if len(args) < 2 {
			return fmt.Errorf("%s: want add or list", args[0])
		}
		if h := args[1]; h == "-h" || h == "--help" || h == "help" {
			fmt.Fprint(stdout, usage)
			return nil
		}
		return admin(args[0], args[1], args[2:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func serve(args []string, stderr io.Writer) error {
	cfg := relay.DefaultConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address to listen on")
	fs.StringVar(&cfg.DataDir, "data", os.Getenv("TETHER_DATA"), "data directory (env TETHER_DATA)")
	fs.DurationVar(&cfg.PingPeriod, "ping", cfg.PingPeriod, "how often agents are pinged; a silent one is dropped after 2.5 periods")
	fs.Func("allowed-origin", "browser origin besides the relay's own that may open /v1/client, e.g. https://app.example.com (repeatable, comma-separated)", func(v string) error {
		for _, o := range strings.Split(v, ",") {
			n, err := relay.ParseOrigin(o)
			if err != nil {
				return err
			}
			cfg.AllowedOrigins = append(cfg.AllowedOrigins, n)
		}
		return nil
	})
	metricsAllowSet, metricsNone := false, false
	fs.Func("metrics-allow", "networks (CIDR or address, comma-separated, repeatable) that may GET /metrics; default loopback; \"none\" serves it to nobody", func(v string) error {
		if !metricsAllowSet {
			cfg.MetricsAllow, metricsAllowSet = []netip.Prefix{}, true
		}
		// "none" cannot be combined with networks: which one was meant?
		if v == "none" {
			if len(cfg.MetricsAllow) > 0 {
				return errors.New(`"none" given with networks`)
			}
			metricsNone = true
			return nil
		}
		if metricsNone {
			return errors.New(`networks given with "none"`)
		}
		for _, n := range strings.Split(v, ",") {
			p, err := parseNet(strings.TrimSpace(n))
			if err != nil {
				return err
			}
			cfg.MetricsAllow = append(cfg.MetricsAllow, p)
		}
		return nil
	})
	level := fs.String("log-level", "info", "debug, info, warn or error")
	securityFlags(fs, &cfg)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("serve: unexpected argument %q", pos[0])
	}
	if cfg.DataDir == "" {
		return errors.New("serve: --data or TETHER_DATA is required")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("serve: --log-level: %w", err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	cfg.Version = version

	// SIGHUP reloads the TLS files while the relay serves; before (the
	// request log may take a while to replay) and after (a shutdown may
	// wait for slow clients), it must not kill the process by default and
	// leave the store to be recovered as after a crash.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)

	srv, err := relay.New(cfg)
	if err != nil {
		return err
	}
	unfloor, _ := heapfloor.Keep(relay.HeapFloor)
	defer unfloor()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Once the shutdown has begun, a second SIGTERM or Ctrl-C ends the
	// process at once, as an operator who sends it means.
	context.AfterFunc(ctx, stop)
	waitHUP := reloadOnHUP(ctx, srv, cfg.Logger)
	err = srv.ListenAndServe(ctx)
	stop()
	waitHUP()
	if cerr := srv.Close(); err == nil {
		err = cerr
	}
	return err
}

func admin(kind, verb string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(kind+" "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", os.Getenv("TETHER_DATA"), "data directory (env TETHER_DATA)")
	devices := fs.String("devices", "", "client add: comma-separated device id patterns the key may use (path.Match globs)")
	methods := fs.String("methods", "", "client add: comma-separated method patterns the key may call, e.g. gpio.*,sys.*")
	grace := fs.Duration("grace", 0, "device rotate: how long the old token works after the agent confirmed (default: the relay's --rotate-grace)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	// Each flag belongs to one subcommand; anywhere else it would be
	// ignored, and the operator would believe it applied.
	only := map[string]string{"devices": "client add", "methods": "client add", "grace": "device rotate"}
	var misplaced error
	fs.Visit(func(f *flag.Flag) {
		if want, ok := only[f.Name]; ok && want != kind+" "+verb && misplaced == nil {
			misplaced = fmt.Errorf("%s %s: --%s applies to %s only", kind, verb, f.Name, want)
		}
	})
	if misplaced != nil {
		return misplaced
	}
	if *dir == "" {
		return errors.New("--data or TETHER_DATA is required")
	}
	if ok, err := adminSecurity(kind, verb, *dir, pos, *grace, stdout); ok {
		return err
	}
	switch verb {
	case "add":
		if len(pos) != 1 {
			return fmt.Errorf("%s add: want exactly one name", kind)
		}
		add, what := relay.AddDevice, "token for device"
		if kind == "client" {
			sc, err := relay.ParseScope(*devices, *methods)
			if err != nil {
				return err
			}
			add, what = func(dir, name string) (string, error) { return relay.AddClientScoped(dir, name, sc) }, "API key for client"
		}
		secret, err := add(*dir, pos[0])
		if errors.Is(err, relay.ErrExists) {
			if kind == "device" {
				return fmt.Errorf("%w (for a new token: tether-relay device rotate %s while its agent is connected, or device revoke %s and add it again)", err, pos[0], pos[0])
			}
			return fmt.Errorf("%w (tether-relay client revoke %s first to replace its key)", err, pos[0])
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s (shown once; only its hash is stored):\n%s\n", what, pos[0], secret)
		return nil
	case "list":
		if len(pos) != 0 {
			return fmt.Errorf("%s list: unexpected argument %q", kind, pos[0])
		}
		list := relay.ListDevices
		if kind == "client" {
			list = relay.ListClients
		}
		creds, err := list(*dir)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCREATED")
		for _, c := range creds {
			fmt.Fprintf(tw, "%s\t%s\n", c.Name, c.Created.Format("2006-01-02 15:04:05Z07:00"))
		}
		return tw.Flush()
	}
	return fmt.Errorf("%s: unknown subcommand %q, want add, list or revoke", kind, verb)
}

// parseNet parses a CIDR prefix, or an address as a prefix of its own.
func parseNet(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want a network like 10.0.0.0/8 or an address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments ("device add ID --data DIR").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
