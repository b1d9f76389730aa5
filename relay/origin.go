package relay

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// ParseOrigin checks and normalises one --allowed-origin value: a scheme
// (http or https) and a host with an optional port, nothing else. The
// result is lower case without a default port, the form browsers send.
func ParseOrigin(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return "", fmt.Errorf("origin %q: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com", s)
	}
	return normOrigin(u.Scheme, u.Host), nil
}

func normOrigin(scheme, host string) string {
	scheme, host = strings.ToLower(scheme), strings.ToLower(host)
	if h, port, err := net.SplitHostPort(host); err == nil &&
		((scheme == "http" && port == "80") || (scheme == "https" && port == "443")) {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	return scheme + "://" + host
}

// originAllowed decides whether a browser may open /v1/client from the
// page that sent r. Requests without an Origin header do not come from a
// browser page and are left to authentication. A page may connect when it
// was served by this relay (the Origin's host is the request's Host) or
// when its origin is in Config.AllowedOrigins. Everything else, including
// the opaque origin "null" of sandboxed frames and file:// pages, is
// refused: browsers attach nothing that would stop a foreign page from
// using a socket the user's ticket or cookie opened.
func (s *Server) originAllowed(r *http.Request) bool {
	vals := r.Header.Values("Origin")
	if len(vals) == 0 {
		return true
	}
	if len(vals) > 1 {
		return false
	}
	u, err := url.Parse(vals[0])
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	origin := normOrigin(u.Scheme, u.Host)
	for _, a := range s.cfg.AllowedOrigins {
		if n, err := ParseOrigin(a); err == nil && n == origin {
			return true
		}
	}
	return false
}
