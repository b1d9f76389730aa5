package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// Secret prefixes tell a device token from a client key at a glance (and in
// leaked-secret scanners).
const (
	DeviceTokenPrefix = "tdv_"
	ClientKeyPrefix   = "tck_"
)

const (
	credentialsFile = "credentials.json"
	credentialsLock = "credentials.lock"
	secretBytes     = 32
)

// credentials is the on-disk form of DIR/credentials.json.
type credentials struct {
	Devices []credEntry `json:"devices"`
	Clients []credEntry `json:"clients"`
}

// credEntry is one device or client. Only the SHA-256 of its secret is kept.
type credEntry struct {
	Name    string    `json:"name"`
	SHA256  string    `json:"sha256"`
	Created time.Time `json:"created"`

	// Clients only: the key's scope (see Scope); empty means unrestricted.
	Devices []string `json:"devices,omitempty"`
	Methods []string `json:"methods,omitempty"`

	// Devices only: in-band token rotation (see rotate.go).
	Rotation *rotationState `json:"rotation,omitempty"`
}

// Credential describes a registered device or client, without its secret.
type Credential struct {
	Name    string
	Created time.Time
}

// ValidName reports whether s can be a device id or client name: a
// protocol.ValidID made only of [A-Za-z0-9._-], so it is safe in URL paths.
func ValidName(s string) bool {
	if !protocol.ValidID(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return s != "." && s != ".."
}

// AddDevice registers device id in dir and returns its new token. It works
// whether or not a relay is running on dir.
func AddDevice(dir, id string) (token string, err error) {
	return addCredential(dir, id, DeviceTokenPrefix, func(c *credentials) *[]credEntry { return &c.Devices })
}

// AddClient registers client name in dir and returns its new API key.
func AddClient(dir, name string) (key string, err error) {
	return addCredential(dir, name, ClientKeyPrefix, func(c *credentials) *[]credEntry { return &c.Clients })
}

// ListDevices returns the registered devices, sorted by id.
func ListDevices(dir string) ([]Credential, error) {
	c, err := readCredentials(dir)
	if err != nil {
		return nil, err
	}
	return listOf(c.Devices), nil
}

// ListClients returns the registered clients, sorted by name.
func ListClients(dir string) ([]Credential, error) {
	c, err := readCredentials(dir)
	if err != nil {
		return nil, err
	}
	return listOf(c.Clients), nil
}

func listOf(es []credEntry) []Credential {
	out := make([]Credential, 0, len(es))
	for _, e := range es {
		out = append(out, Credential{Name: e.Name, Created: e.Created})
	}
	slices.SortFunc(out, func(a, b Credential) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func addCredential(dir, name, prefix string, list func(*credentials) *[]credEntry, opts ...func(*credEntry)) (string, error) {
	if !ValidName(name) {
		return "", fmt.Errorf("%w: %q (want 1..%d of [A-Za-z0-9._-])", ErrInvalidName, name, protocol.MaxIDLen)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("relay: credentials: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, credentialsLock))
	if err != nil {
		return "", fmt.Errorf("relay: credentials lock: %w", err)
	}
	defer unlock()

	c, err := readCredentials(dir)
	if err != nil {
		return "", err
	}
	l := list(c)
	for _, e := range *l {
		if e.Name == name {
			return "", fmt.Errorf("%w: %q", ErrExists, name)
		}
	}
	secret, err := newSecret(prefix)
	if err != nil {
		return "", err
	}
	e := credEntry{Name: name, SHA256: hashSecret(secret), Created: time.Now().UTC()}
	for _, o := range opts {
		o(&e)
	}
	*l = append(*l, e)
	if err := writeCredentials(dir, c); err != nil {
		return "", err
	}
	return secret, nil
}

func newSecret(prefix string) (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("relay: random: %w", err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// readCredentials reads dir's credentials; a missing file is empty.
func readCredentials(dir string) (*credentials, error) {
	path := filepath.Join(dir, credentialsFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &credentials{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relay: credentials: %w", err)
	}
	defer f.Close()
	return decodeCredentials(f, path)
}

// decodeCredentials reads the credentials file f, named path.
func decodeCredentials(f *os.File, path string) (*credentials, error) {
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("relay: credentials: %w", err)
	}
	var c credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("relay: credentials %s: %w", path, err)
	}
	return &c, nil
}

// writeCredentials replaces the file atomically: a reader sees the old or
// the new file, never a torn one, and after a crash one of them survives.
func writeCredentials(dir string, c *credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("relay: credentials: %w", err)
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(dir, credentialsFile+".tmp*")
	if err != nil {
		return fmt.Errorf("relay: credentials: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("relay: credentials: %w", err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("relay: credentials: %w", err)
	}
	if err := ownLikeDir(tmp, dir); err != nil {
		tmp.Close()
		return fmt.Errorf("relay: credentials: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("relay: credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("relay: credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, credentialsFile)); err != nil {
		return fmt.Errorf("relay: credentials: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("relay: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("relay: sync %s: %w", dir, err)
	}
	return nil
}

// credCache is the running relay's view of credentials.json. It re-reads
// the file whenever it changed, so a device added by the admin command can
// connect at once and deleted credentials stop working at once.
//
// Every authentication checks the file, so the check must be cheap. The
// file last loaded stays open and is fstat'ed, which neither walks the
// path nor allocates: writers replace the file by rename (the open file
// is then left with no links and a new ctime) or an editor rewrites it in
// place (new size, mtime or ctime), and either shows on the open file.
// While no file is loaded, or where the open file cannot be checked this
// way (see credentials_other.go), the path is stat'ed instead.
type credCache struct {
	dir  string
	path string // dir/credentials.json
	log  *slog.Logger

	mu sync.Mutex
	// Guarded by mu:
	file    *os.File                 // the file last loaded, kept open; nil if none or not kept
	version fileVersion              // of file when it was loaded
	stat    fs.FileInfo              // of the file last loaded; nil if none
	devices map[secretHash]credEntry // by the hash of the token
	clients map[secretHash]credEntry // by the hash of the key
	names   map[string]credEntry     // device id → entry
	// tokens indexes every accepted device token hash, rotation ones
	// included; clientNames maps client name → entry (for scopes).
	tokens      map[string]deviceToken
	clientNames map[string]credEntry
	// failure is the last reload error logged and failureAt when: a file
	// that stays unreadable is reported again every credFailureRepeat,
	// not on every authentication and sweep.
	failure   string
	failureAt time.Time
}

// credFailureRepeat is how often a credentials file that still cannot be
// read is reported again.
const credFailureRepeat = time.Minute

func newCredCache(dir string, log *slog.Logger) (*credCache, error) {
	c := &credCache{dir: dir, path: filepath.Join(dir, credentialsFile), log: log}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refreshLocked(); err != nil {
		return nil, err
	}
	return c, nil
}

// close releases the open file. The cache still works after it, checking
// the path on every call.
func (c *credCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.file != nil {
		c.file.Close()
		c.file = nil
	}
}

// refreshLocked reloads the file if it changed since the last load. If the
// new file cannot be read, the old credentials stay in force.
func (c *credCache) refreshLocked() error {
	if c.devices != nil {
		if c.file != nil {
			if unchanged(c.file, c.version) {
				return nil
			}
		} else {
			fi, err := os.Stat(c.path)
			if errors.Is(err, fs.ErrNotExist) {
				fi, err = nil, nil
			}
			if err != nil {
				return fmt.Errorf("relay: credentials: %w", err)
			}
			if sameFile(c.stat, fi) {
				return nil
			}
		}
	}
	f, err := os.Open(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		c.setLocked(nil, fileVersion{}, nil, &credentials{})
		return nil
	}
	if err != nil {
		return fmt.Errorf("relay: credentials: %w", err)
	}
	// Both versions are taken before reading: an edit made while reading
	// shows as a change on the next call, which reads the file again.
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("relay: credentials: %w", err)
	}
	v, watchable := versionOf(f)
	creds, err := decodeCredentials(f, c.path)
	if err != nil {
		f.Close()
		return err
	}
	if !watchable {
		f.Close()
		f = nil
	}
	c.setLocked(f, v, fi, creds)
	return nil
}

// setLocked puts creds in force: read from f (nil: not kept open) at
// version v, whose FileInfo is fi (nil: there is no file).
func (c *credCache) setLocked(f *os.File, v fileVersion, fi fs.FileInfo, creds *credentials) {
	if c.file != nil {
		c.file.Close()
	}
	c.file, c.version, c.stat = f, v, fi
	c.devices = indexByHash(creds.Devices)
	c.clients = indexByHash(creds.Clients)
	c.names = make(map[string]credEntry, len(creds.Devices))
	for _, e := range creds.Devices {
		c.names[e.Name] = e
	}
	c.tokens = indexDeviceTokens(creds.Devices)
	c.clientNames = make(map[string]credEntry, len(creds.Clients))
	for _, e := range creds.Clients {
		c.clientNames[e.Name] = e
	}
}

func sameFile(a, b fs.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// secretHash is the SHA-256 of a secret, which credentials.json keeps in
// hex. Secrets are looked up by it as bytes: hex would cost every
// authentication two allocations.
type secretHash [sha256.Size]byte

// indexByHash indexes es by the hash of their secret. An entry whose hash
// is not SHA-256 hex matches no secret, and is left out.
func indexByHash(es []credEntry) map[secretHash]credEntry {
	m := make(map[secretHash]credEntry, len(es))
	for _, e := range es {
		var h secretHash
		if len(e.SHA256) != hex.EncodedLen(len(h)) {
			continue
		}
		if _, err := hex.Decode(h[:], []byte(e.SHA256)); err != nil {
			continue
		}
		m[h] = e
	}
	return m
}

// lookupLocked finds the entry whose hash matches secret's. The hash is
// compared, never the secret: how long a compare of hashes takes tells
// nothing about the secret, whose hash an attacker cannot steer byte by
// byte.
func lookupLocked(m map[secretHash]credEntry, secret string) (credEntry, bool) {
	// Copied on the stack: []byte(secret) would allocate, secrets being
	// longer than the runtime's 32-byte buffer for such conversions.
	var b [128]byte
	e, ok := m[sha256.Sum256(append(b[:0], secret...))]
	return e, ok
}

// reloadLocked is refreshLocked for callers that keep serving with the
// last good credentials when the file is broken.
func (c *credCache) reloadLocked() {
	err := c.refreshLocked()
	if err == nil {
		if c.failure != "" {
			c.log.Info("credentials reloaded")
			c.failure = ""
		}
		return
	}
	if msg := err.Error(); msg != c.failure || time.Since(c.failureAt) >= credFailureRepeat {
		c.failure, c.failureAt = msg, time.Now()
		if errors.Is(err, fs.ErrPermission) {
			c.log.Error("credentials not reloaded; keeping the previous ones (run tether-relay device and client commands as the user the relay runs as)", "err", err)
			return
		}
		c.log.Error("credentials not reloaded; keeping the previous ones", "err", err)
	}
}

// device returns the device id owning token.
func (c *credCache) device(token string) (string, bool) {
	if !strings.HasPrefix(token, DeviceTokenPrefix) {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	e, ok := lookupLocked(c.devices, token)
	return e.Name, ok
}

// client returns the client owning key.
func (c *credCache) client(key string) (clientID, bool) {
	id, _, ok := c.clientView(key)
	return id, ok
}

// clientView is client, with the view of the credentials key was found
// in: what else a REST call asks of them (its client's scope, whether its
// device is registered) is answered from that view, without a second look
// at the file a moment later.
func (c *credCache) clientView(key string) (clientID, credView, bool) {
	if !strings.HasPrefix(key, ClientKeyPrefix) {
		return clientID{}, credView{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	e, ok := lookupLocked(c.clients, key)
	if !ok {
		return clientID{}, credView{}, false
	}
	return clientID{name: e.Name, key: e.SHA256}, c.viewLocked(), true
}

// hasDevice reports whether id is a registered device.
func (c *credCache) hasDevice(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	_, ok := c.names[id]
	return ok
}

// deviceIDs returns all registered device ids, sorted.
func (c *credCache) deviceIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reloadLocked()
	ids := make([]string, 0, len(c.names))
	for id := range c.names {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// bearer extracts the token of an "Authorization: Bearer" header.
func bearer(h string) string {
	const p = "bearer "
	if len(h) < len(p) || !strings.EqualFold(h[:len(p)], p) {
		return ""
	}
	return strings.TrimSpace(h[len(p):])
}
