package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// ticketPrefix marks browser tickets so that a leaked one is recognisable
// (and never mistaken for a client key, which it cannot stand in for).
const ticketPrefix = "tkt_"

// ticketBytes is the randomness of a ticket: 256 bits, so guessing one
// within its lifetime is out of the question.
const ticketBytes = 32

// errTooManyTickets reports that Config.MaxTickets unused tickets exist,
// or that the client holds its share of them.
var errTooManyTickets = errors.New("relay: too many outstanding tickets")

// ticketShare is the part of Config.MaxTickets one client may hold unused
// (1/ticketShare, at least one), so that no key, however scoped, can
// spend the pool and lock every other client out of /v1/client.
const ticketShare = 10

// ticketStore holds the unused browser tickets, keyed by their SHA-256 so
// that a memory dump does not yield usable tickets. The zero value is
// ready to use.
type ticketStore struct {
	mu sync.Mutex
	// Guarded by mu:
	byHash map[[sha256.Size]byte]ticket
	held   map[string]int // unused tickets by client
}

type ticket struct {
	client  clientID // the key that bought it, which must still be valid
	expires time.Time
}

// issue creates a ticket for client valid for ttl. At most limit unused
// tickets are kept, and a client holds at most its share of them; expired
// ones are dropped to make room first.
func (ts *ticketStore) issue(client clientID, ttl time.Duration, limit int, now time.Time) (string, time.Time, error) {
	var raw [ticketBytes]byte
	rand.Read(raw[:]) // never fails (crypto/rand panics on a broken source)
	tok := ticketPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	exp := now.Add(ttl)

	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.byHash == nil {
		ts.byHash = make(map[[sha256.Size]byte]ticket)
		ts.held = make(map[string]int)
	}
	share := max(1, limit/ticketShare)
	if len(ts.byHash) >= limit || ts.held[client.name] >= share {
		ts.purgeLocked(now)
		if len(ts.byHash) >= limit || ts.held[client.name] >= share {
			return "", time.Time{}, errTooManyTickets
		}
	}
	ts.byHash[sha256.Sum256([]byte(tok))] = ticket{client: client, expires: exp}
	ts.held[client.name]++
	return tok, exp, nil
}

// redeem spends tok: it returns the client it was issued to, once, and
// only before it expires. A presented ticket is gone afterwards whether it
// was still valid or not.
func (ts *ticketStore) redeem(tok string, now time.Time) (clientID, bool) {
	if len(tok) > 2*ticketBytes+len(ticketPrefix) {
		return clientID{}, false
	}
	h := sha256.Sum256([]byte(tok))
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.byHash[h]
	if !ok {
		return clientID{}, false
	}
	ts.dropLocked(h, t)
	if !now.Before(t.expires) {
		return clientID{}, false
	}
	return t.client, true
}

func (ts *ticketStore) purgeLocked(now time.Time) {
	for h, t := range ts.byHash {
		if !now.Before(t.expires) {
			ts.dropLocked(h, t)
		}
	}
}

func (ts *ticketStore) dropLocked(h [sha256.Size]byte, t ticket) {
	delete(ts.byHash, h)
	if ts.held[t.client.name]--; ts.held[t.client.name] <= 0 {
		delete(ts.held, t.client.name)
	}
}

// ticketAnswer is the body of a successful POST /v1/tickets.
type ticketAnswer struct {
	Ticket    string    `json:"ticket"`
	Expires   time.Time `json:"expires"`
	ExpiresIn int64     `json:"expires_in_ms"` // for clients whose clock is off
}

// handleTicket serves POST /v1/tickets: a client key buys a single-use,
// short-lived ticket that a browser passes as ?ticket= when it opens
// /v1/client, since browsers cannot set headers on a WebSocket.
func (s *Server) handleTicket(w http.ResponseWriter, r *http.Request) {
	name, _ := ClientFrom(r.Context()) // set by s.client
	id := clientID{name: name, key: keyHashFrom(r.Context())}
	tok, exp, err := s.tickets.issue(id, s.cfg.TicketTTL, s.cfg.MaxTickets, time.Now())
	if err != nil {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusTooManyRequests, codeTooMany, "too many unused tickets (of all clients, or of this one); try again shortly")
		return
	}
	writeJSON(w, http.StatusCreated, ticketAnswer{Ticket: tok, Expires: exp.UTC(), ExpiresIn: s.cfg.TicketTTL.Milliseconds()})
}

// secretParams are query parameters whose values never reach a log.
var secretParams = []string{"ticket", "key", "token", "access_token"}

// redactedURI returns u's path and query for logging, with the values of
// secret parameters replaced.
func redactedURI(u *url.URL) string {
	if u.RawQuery == "" {
		return u.EscapedPath()
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return u.EscapedPath() + "?[unparsable query]"
	}
	for _, k := range secretParams {
		for key, vs := range q {
			if !equalFoldASCII(key, k) {
				continue
			}
			for i := range vs {
				vs[i] = "REDACTED"
			}
		}
	}
	return u.EscapedPath() + "?" + q.Encode()
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
