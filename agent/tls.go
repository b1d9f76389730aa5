package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// TLSConfig builds the agent's TLS settings for a wss:// relay. caFile, if
// set, replaces the system roots with the CAs in that PEM file (a private
// relay CA). certFile and keyFile, if set, are the device's client
// certificate for mutual TLS; the relay maps its CN or DNS SAN to the
// device id, and no token is needed.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("agent: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("agent: CA file %s: no PEM certificates", caFile)
		}
		c.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("agent: client certificate and key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("agent: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// checkTransport refuses plain ws:// to anything but a loopback address
// unless insecure is set: a device token sent in the clear can be replayed
// by anyone on the path.
func checkTransport(u *url.URL, insecure bool) error {
	if u.Scheme != "ws" || insecure || isLoopback(u.Hostname()) {
		return nil
	}
	return fmt.Errorf("agent: relay URL %s is plain ws:// to a non-loopback host; use wss:// (or --insecure on a trusted network)", u.Redacted())
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hasClientCert reports whether c authenticates with a certificate.
func hasClientCert(c *tls.Config) bool {
	return c != nil && (len(c.Certificates) > 0 || c.GetClientCertificate != nil)
}
