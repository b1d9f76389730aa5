package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// errCheckFailed is returned by check after it has printed the problems.
var errCheckFailed = errors.New("check failed")

// check is "tether-agent check [flags]": it reads the configuration exactly
// as the agent would (same flags, environment and file), reports every
// problem with its line and field, then opens the board and lists which
// resources are available. It exits non-zero if anything would keep the
// agent from working. It does not contact the relay.
//
// Opening the board drives configured outputs to their initial level, as
// starting the agent does; run it while the agent is stopped, since a pin
// or bus held by the running agent shows as unavailable.
func check(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cfg, err := readConfig("tether-agent check", args, getenv)
	if err != nil {
		for _, e := range flatten(err) {
			fmt.Fprintln(stderr, e)
		}
		return fmt.Errorf("%w: the configuration is invalid", errCheckFailed)
	}
	problems := 0
	problem := func(format string, a ...any) {
		problems++
		fmt.Fprintf(stderr, format+"\n", a...)
	}

	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if cfg.configFile != "" {
		fmt.Fprintf(tw, "config\t%s: valid\n", cfg.configFile)
	} else {
		fmt.Fprintf(tw, "config\t(no file: flags and environment only)\n")
	}
	if err := cfg.credentials(getenv); err != nil {
		problem("%v", err)
	} else {
		// The same checks as the agent's start: the relay's scheme, plain
		// ws:// off loopback without --insecure, the credits' range, the
		// TLS files.
		acfg, err := cfg.agentConfig(slog.New(slog.DiscardHandler))
		if err == nil {
			err = acfg.Validate()
		}
		if err != nil {
			problem("%v", err)
		}
		fmt.Fprintf(tw, "relay\t%s\n", cfg.Relay)
		switch {
		case cfg.token == "":
			fmt.Fprintf(tw, "token\tnone (the client certificate identifies the device)\n")
		case cfg.tokenInFile:
			fmt.Fprintf(tw, "token\tset (from %s)\n", cfg.TokenFile)
		default:
			fmt.Fprintf(tw, "token\tset (from --token, TETHER_TOKEN or token:)\n")
		}
	}
	fmt.Fprintf(tw, "state\t%s\n", stateDirStatus(cfg.State, problem))
	fmt.Fprintf(tw, "credits\t%d\n", cfg.Credits)
	tw.Flush()

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	b, err := openBoard(cfg, log)
	if err != nil {
		for _, e := range flatten(err) {
			problem("board: %v", e)
		}
		return fmt.Errorf("%w: %d problem(s)", errCheckFailed, problems)
	}
	defer b.Close()
	name, methods, resources := b.Describe()
	fmt.Fprintf(tw, "board\t%s (--board %s)\n", name, cfg.Board)
	fmt.Fprintf(tw, "methods\t%s\n", strings.Join(methods, ", "))
	tw.Flush()

	fmt.Fprintln(stdout)
	if len(resources) == 0 {
		fmt.Fprintln(stdout, "no hardware resources configured (only sys.* methods)")
	} else {
		fmt.Fprintln(tw, "RESOURCE\tKIND\tSTATUS\tDETAILS")
		for _, r := range resources {
			status := "available"
			if !r.Available {
				status = "UNAVAILABLE"
				problem("%s %s: %s", r.Kind, r.Name, r.Error)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Kind, status, details(r.Info))
		}
		tw.Flush()
	}
	if problems > 0 {
		return fmt.Errorf("%w: %d problem(s)", errCheckFailed, problems)
	}
	fmt.Fprintln(stdout, "\nok")
	return nil
}

// stateDirStatus says whether the journal directory can be used.
func stateDirStatus(dir string, problem func(string, ...any)) string {
	if dir == "" {
		return "(none: finished requests are remembered in memory only)"
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, perr := os.Stat(filepath.Dir(dir)); perr != nil {
			problem("state %s: cannot be created: %v", dir, perr)
			return dir + ": missing"
		}
		return dir + " (will be created)"
	case err != nil:
		problem("state %s: %v", dir, err)
		return dir + ": unusable"
	case !fi.IsDir():
		problem("state %s: not a directory", dir)
		return dir + ": not a directory"
	}
	f, err := os.CreateTemp(dir, ".check-*")
	if err != nil {
		problem("state %s: not writable: %v", dir, err)
		return dir + ": not writable"
	}
	f.Close()
	os.Remove(f.Name())
	return dir + " (writable)"
}

// details renders a resource's info as the JSON object the relay gets.
func details(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
