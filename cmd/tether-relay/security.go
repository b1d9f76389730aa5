package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/tetherhq/tether/relay"
)

// securityFlags adds serve's TLS, admission and rate-limit flags to fs.
func securityFlags(fs *flag.FlagSet, cfg *relay.Config) {
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate (PEM); with --tls-key the relay serves HTTPS/WSS only; SIGHUP reloads it")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "TLS private key (PEM)")
	fs.StringVar(&cfg.ClientCA, "client-ca", "", "CA bundle (PEM) for agent client certificates (mutual TLS); the certificate's DNS SAN or CN names the device")
	fs.Float64Var(&cfg.AdmitRate, "admit-rate", cfg.AdmitRate, "agent WebSocket upgrades admitted per second; the excess gets 503 + Retry-After")
	fs.IntVar(&cfg.AdmitBurst, "admit-burst", cfg.AdmitBurst, "agent upgrades admitted at once after a quiet spell")
	fs.IntVar(&cfg.MaxConns, "max-conns", cfg.MaxConns, "most agent sessions at once")
	fs.IntVar(&cfg.ClientConns, "client-conns", cfg.ClientConns, "most /v1/client connections one client holds at once; 429 beyond")
	fs.Float64Var(&cfg.ClientRate, "client-rate", 0, "submits per second per client key, 429 beyond (default: no limit)")
	fs.IntVar(&cfg.ClientBurst, "client-burst", 0, "submit burst per client key")
	fs.Float64Var(&cfg.DeviceRate, "device-rate", 0, "submits per second per device, 429 beyond (default: no limit)")
	fs.IntVar(&cfg.DeviceBurst, "device-burst", 0, "submit burst per device")
	fs.DurationVar(&cfg.RotateGrace, "rotate-grace", cfg.RotateGrace, "how long an old device token works after its agent confirmed a rotation")
}

// reloadOnHUP re-reads the TLS files on every SIGHUP until ctx ends, and
// returns a function that waits for it to stop.
func reloadOnHUP(ctx context.Context, srv *relay.Server, log *slog.Logger) (wait func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := srv.ReloadTLS(); err != nil {
					log.Error("TLS reload failed; keeping the previous certificate", "err", err)
				}
			}
		}
	}()
	return wg.Wait
}

// adminSecurity runs the admin verbs of the security layer: device rotate
// and device revoke. It reports false for verbs it does not know.
func adminSecurity(kind, verb, dir string, pos []string, grace time.Duration, stdout io.Writer) (bool, error) {
	if kind == "client" && verb == "revoke" {
		if len(pos) != 1 {
			return true, errors.New("client revoke: want exactly one client name")
		}
		if err := relay.RevokeClient(dir, pos[0]); err != nil {
			return true, err
		}
		fmt.Fprintf(stdout, "client %s revoked: its key no longer authenticates; a running relay refuses its open WebSockets' calls and closes them within a second\n", pos[0])
		return true, nil
	}
	if kind != "device" || (verb != "rotate" && verb != "revoke") {
		return false, nil
	}
	if len(pos) != 1 {
		return true, fmt.Errorf("device %s: want exactly one device id", verb)
	}
	if verb == "revoke" {
		if err := relay.RevokeDevice(dir, pos[0]); err != nil {
			return true, err
		}
		fmt.Fprintf(stdout, "device %s revoked: its tokens no longer authenticate; a running relay closes its session within a second\n", pos[0])
		return true, nil
	}
	if err := relay.RotateDevice(dir, pos[0], grace); err != nil {
		return true, err
	}
	fmt.Fprintf(stdout, "rotation of device %s requested: the relay sends the agent a new token over its session (now, or when it next connects); the old token works until the agent confirms, then for the grace period\n", pos[0])
	return true, nil
}
