package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof" // --pprof on the bench relay and agents, for profiling by hand
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tetherhq/tether/agent"
	"github.com/tetherhq/tether/hw/mock"
	"github.com/tetherhq/tether/internal/heapfloor"
	"github.com/tetherhq/tether/relay"
)

// Roles are the processes a run starts besides itself. Each is a
// subcommand of tether-bench (and of the smoke test binary), so every
// measured server runs in its own process.
var roles = map[string]func(args []string) error{
	"relay":      roleRelay,
	"nats":       roleNATS,
	"pong":       rolePong,
	"agents":     roleAgents,
	"responders": roleResponders,
	"swarm":      roleSwarm,
}

// IsRole reports whether name is a child role, so main can dispatch to
// RunRole.
func IsRole(name string) bool { return roles[name] != nil }

// RunRole runs child role name with its arguments until SIGTERM (or, for
// the swarm, until stdin closes).
func RunRole(name string, args []string) error {
	fn := roles[name]
	if fn == nil {
		return fmt.Errorf("bench: unknown role %q", name)
	}
	raiseNofile()
	return fn(args)
}

// raiseNofile lifts RLIMIT_NOFILE as far as the process may: 50,000
// connections need more descriptors than the usual soft (and, here,
// hard) limit. Root may raise the hard limit up to fs.nr_open.
func raiseNofile() {
	want := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		var n uint64
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &n); err == nil && n > 0 {
			want = n
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
		return
	}
	lim.Cur = lim.Max // not root: the soft limit up to the hard one
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// untilTerm returns a context ended by SIGTERM or SIGINT.
func untilTerm() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// readyFreeing prints "ready ADDR", having first set SIGUSR1 to mean: a
// full GC that returns free memory to the OS, then "freed". RSS read
// afterwards is live memory, not garbage the scavenger has not reached
// yet. Each line is one write, so the two never mix.
func readyFreeing(ctx context.Context, addr net.Addr) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				runtime.GC()
				debug.FreeOSMemory()
				fmt.Println("freed")
			}
		}
	}()
	fmt.Println("ready", addr)
}

// listenRetry listens on addr, retrying briefly: a restarted relay takes
// over the port its predecessor just released.
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, err
}

// roleRelay runs a relay with the default configuration, as
// `tether-relay serve` would.
func roleRelay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	data := fs.String("data", "", "data directory")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address")
	unthrottled := fs.Int("unthrottled", 0, "if > 0: no upgrade rate limit and room for this many sessions (the defaults are 500/s and 10,000)")
	maxConns := fs.Int("max-conns", 0, "if > 0: room for this many sessions, admission rate unchanged")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := relay.DefaultConfig()
	cfg.DataDir = *data
	if *maxConns > 0 {
		cfg.MaxConns = *maxConns
	}
	if *unthrottled > 0 {
		cfg.AdmitRate, cfg.AdmitBurst, cfg.MaxConns = math.Inf(1), *unthrottled, *unthrottled
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := relay.New(cfg)
	if err != nil {
		return err
	}
	unfloor, _ := heapfloor.Keep(relay.HeapFloor)
	defer unfloor()
	ln, err := listenRetry(*listen)
	if err != nil {
		srv.Close()
		return err
	}
	if *pprofAddr != "" {
		go http.ListenAndServe(*pprofAddr, nil) // dies with the process
	}
	ctx, stop := untilTerm()
	defer stop()
	readyFreeing(ctx, ln.Addr())
	err = srv.Serve(ctx, ln)
	if cerr := srv.Close(); err == nil {
		err = cerr
	}
	return err
}

// roleNATS runs an embedded nats-server with default options.
func roleNATS(args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	port := fs.Int("port", -1, "port (-1: any)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: *port, NoLog: true, NoSigs: true, MaxConn: 1 << 20})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats-server did not start")
	}
	ctx, stop := untilTerm()
	defer stop()
	readyFreeing(ctx, ns.Addr())
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}

// rolePong echoes fixed-size messages over TCP: the loopback floor.
func rolePong(args []string) error {
	fs := flag.NewFlagSet("pong", flag.ContinueOnError)
	size := fs.Int("size", payloadSize, "message size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, stop := untilTerm()
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	fmt.Println("ready", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		go func() {
			defer c.Close()
			c.(*net.TCPConn).SetNoDelay(true)
			buf := make([]byte, *size)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// roleAgents runs full tether agents (package agent on the simulated
// board, each with its own durable journal), one per line of --tokens.
func roleAgents(args []string) error {
	fs := flag.NewFlagSet("agents", flag.ContinueOnError)
	relayURL := fs.String("relay", "", "relay ws:// URL")
	tokens := fs.String("tokens", "", "file of 'device token' lines")
	state := fs.String("state", "", "state directory (one journal per agent below it)")
	credits := fs.Int("credits", 1, "credits per agent")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	creds, err := readTokens(*tokens)
	if err != nil {
		return err
	}
	if *pprofAddr != "" {
		// With several agents processes only the first gets the address;
		// the others' listen fails quietly.
		go http.ListenAndServe(*pprofAddr, nil) // dies with the process
	}
	ctx, stop := untilTerm()
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var wg sync.WaitGroup
	var errs []error
	for _, c := range creds {
		b, err := mock.New(mock.Options{Logger: log})
		if err != nil {
			return err
		}
		defer b.Close()
		cfg := agent.DefaultConfig()
		cfg.Relay, cfg.Token, cfg.Credits, cfg.Logger = *relayURL, c.token, *credits, log
		if *state != "" {
			cfg.StateDir = filepath.Join(*state, c.device)
		}
		a, err := agent.New(cfg, b)
		if err != nil {
			errs = append(errs, err)
			break
		}
		defer a.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Run(ctx)
		}()
	}
	if len(errs) == 0 {
		fmt.Println("ready")
	} else {
		stop()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// roleResponders answers NATS requests on ping.<device> by echoing them:
// --conns connections (one per simulated agent), each with --subs
// subscriptions in a queue group (the agent's credits: nats.go runs each
// subscription's handler on its own goroutine).
func roleResponders(args []string) error {
	fs := flag.NewFlagSet("responders", flag.ContinueOnError)
	url := fs.String("nats", "", "nats:// URL")
	first := fs.Int("first", 0, "index of the first device")
	conns := fs.Int("conns", 1, "connections, one per device")
	subs := fs.Int("subs", 1, "subscriptions per connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ncs []*nats.Conn
	defer func() {
		for _, nc := range ncs {
			nc.Close()
		}
	}()
	for i := range *conns {
		nc, err := nats.Connect(*url, nats.NoReconnect())
		if err != nil {
			return err
		}
		ncs = append(ncs, nc)
		subj := "ping." + deviceID(*first+i)
		for range *subs {
			if _, err := nc.QueueSubscribe(subj, "agents", func(m *nats.Msg) { m.Respond(m.Data) }); err != nil {
				return err
			}
		}
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	ctx, stop := untilTerm()
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

// token is one device credential.
type token struct{ device, token string }

func readTokens(path string) ([]token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []token
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		d, t, ok := strings.Cut(sc.Text(), " ")
		if ok {
			out = append(out, token{d, t})
		}
	}
	return out, sc.Err()
}
