package main

import (
	"archive/tar"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tetherhq/tether/relay"
)

// backup writes a copy of the relay's data directory to a tar file: taken
// by the relay serving it, through its admin socket, or from the
// directory itself when no relay serves it.
func backup(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", os.Getenv("TETHER_DATA"), "data directory (env TETHER_DATA)")
	out := fs.String("out", "", "write the copy to this file (a tar of relay.db and credentials.json), or - for stdout")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("backup: unexpected argument %q", pos[0])
	}
	if *dir == "" {
		return errors.New("backup: --data or TETHER_DATA is required")
	}
	if *out == "" {
		return errors.New("backup: --out FILE is required (- for stdout)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *out == "-" {
		how, err := copyData(ctx, *dir, stdout)
		if err == nil {
			fmt.Fprintf(stderr, "backup of %s written to stdout (%s)\n", *dir, how)
		}
		return err
	}
	// Into a temporary file renamed once the copy is whole and on disk: a
	// copy cut short never stands where a good one was.
	f, err := os.CreateTemp(filepath.Dir(*out), filepath.Base(*out)+".tmp*")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	how, err := copyData(ctx, *dir, f)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), *out)
	}
	if err == nil {
		err = syncDir(filepath.Dir(*out))
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(stdout, "backup of %s written to %s: %d bytes (%s)\n", *dir, *out, fi.Size(), how)
	return nil
}

// restore unpacks a copy made by backup into a new data directory and
// checks it.
func restore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("data", os.Getenv("TETHER_DATA"), "the new data directory, empty or not yet made (env TETHER_DATA)")
	from := fs.String("from", "", "the copy (a file made by tether-relay backup), or - for stdin")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("restore: unexpected argument %q", pos[0])
	}
	if *dir == "" {
		return errors.New("restore: --data or TETHER_DATA is required")
	}
	if *from == "" {
		return errors.New("restore: --from FILE is required (- for stdin)")
	}
	in := io.Reader(os.Stdin)
	if *from != "-" {
		f, err := os.Open(*from)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		defer f.Close()
		in = f
	}
	info, err := relay.Restore(in, *dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored into %s: relay.db of %d bytes (requests: %d), credentials (devices: %d, clients: %d); start the relay on it (pending requests count as possibly run)\n",
		*dir, info.Bytes, info.Requests, info.Devices, info.Clients)
	return nil
}

// copyData writes the copy of dir to w and checks that it is whole,
// returning how it was taken.
func copyData(ctx context.Context, dir string, w io.Writer) (string, error) {
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := checkBackup(io.TeeReader(pr, w))
		pr.CloseWithError(err) // a writer still writing learns of it
		checked <- err
	}()
	how, err := fetchBackup(ctx, dir, pw)
	pw.CloseWithError(err)
	if cerr := <-checked; err == nil && cerr != nil {
		err = fmt.Errorf("the copy is not whole: %w", cerr)
	}
	return how, err
}

// fetchBackup asks the relay serving dir for the copy, or takes it from
// dir when nothing answers on the admin socket.
func fetchBackup(ctx context.Context, dir string, w io.Writer) (string, error) {
	sock := filepath.Join(dir, relay.AdminSocket)
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
	}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://relay/v1/backup", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			// No relay serves dir (or one was killed and left its socket).
			return "taken from the directory; no relay serves it", relay.BackupDir(ctx, dir, w)
		}
		if errors.Is(err, syscall.EINVAL) {
			// The path is too long for a Unix socket: a relay serving
			// dir serves without its admin socket, so only a stopped
			// one can be copied.
			if err := relay.BackupDir(ctx, dir, w); err != nil {
				return "", fmt.Errorf("%w (%s is too long for a Unix socket, so a relay serving the directory cannot be asked for a copy: stop it first, or serve the directory through a shorter path)", err, sock)
			}
			return "taken from the directory; its path is too long for an admin socket", nil
		}
		return "", fmt.Errorf("relay at %s: %w", sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("relay at %s: %s: %s", sock, resp.Status, strings.TrimSpace(string(b)))
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return "", fmt.Errorf("relay at %s: copy cut short: %w", sock, err)
	}
	return "taken by the serving relay", nil
}

// checkBackup reads a copy through and says whether it is a whole one:
// a tar stream that ends properly and holds relay.db.
func checkBackup(r io.Reader) error {
	tr := tar.NewReader(r)
	db := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h.Name == "relay.db" {
			db = true
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return err
		}
	}
	// The rest: the tar end's padding, read so the writer is not blocked.
	io.Copy(io.Discard, r)
	if !db {
		return errors.New("no relay.db in it")
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
