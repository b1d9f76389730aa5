package relay

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// tlsState holds the relay's certificate and client CA pool. Both are
// swapped atomically by reload, so a SIGHUP picks up renewed files for new
// handshakes while established connections carry on untouched.
type tlsState struct {
	certFile, keyFile, caFile string

	cert *atomic.Pointer[tls.Certificate]
	pool *atomic.Pointer[x509.CertPool] // nil pointer value: no mutual TLS
}

// newTLSState loads the files named in cfg; it returns nil when TLS is not
// configured.
func newTLSState(cfg Config) (*tlsState, error) {
	if cfg.TLSCert == "" && cfg.TLSKey == "" {
		if cfg.ClientCA != "" {
			return nil, errors.New("relay: ClientCA needs TLSCert and TLSKey")
		}
		return nil, nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		return nil, errors.New("relay: TLSCert and TLSKey go together")
	}
	t := &tlsState{
		certFile: cfg.TLSCert, keyFile: cfg.TLSKey, caFile: cfg.ClientCA,
		cert: new(atomic.Pointer[tls.Certificate]),
		pool: new(atomic.Pointer[x509.CertPool]),
	}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// reload re-reads the certificate, key and client CA bundle. On any error
// the previous ones stay in force.
func (t *tlsState) reload() error {
	cert, err := tls.LoadX509KeyPair(t.certFile, t.keyFile)
	if err != nil {
		return fmt.Errorf("relay: TLS certificate: %w", err)
	}
	var pool *x509.CertPool
	if t.caFile != "" {
		if pool, err = loadPool(t.caFile); err != nil {
			return fmt.Errorf("relay: client CA: %w", err)
		}
	}
	t.cert.Store(&cert)
	if pool != nil {
		t.pool.Store(pool)
	}
	return nil
}

// loadPool reads a PEM bundle of CA certificates.
func loadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates", file)
	}
	return pool, nil
}

// config returns the listener's TLS configuration. Each handshake reads
// the current certificate and pool.
func (t *tlsState) config() *tls.Config {
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// WebSocket upgrades are HTTP/1.1.
		NextProtos: []string{"http/1.1"},
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.GetConfigForClient = nil
		c.Certificates = []tls.Certificate{*t.cert.Load()}
		if pool := t.pool.Load(); pool != nil {
			// Certificates are optional: agents may still use tokens,
			// and clients use keys. A certificate that is presented must
			// verify, though.
			c.ClientAuth = tls.VerifyClientCertIfGiven
			c.ClientCAs = pool
		}
		return c, nil
	}
	return base
}

// ReloadTLS re-reads the TLS certificate, key and client CA bundle (the
// relay does this on SIGHUP). Connections already established are not
// affected; the next handshake uses the new files. It is a no-op without
// TLS.
func (s *Server) ReloadTLS() error {
	if s.guard.tls == nil {
		return nil
	}
	if err := s.guard.tls.reload(); err != nil {
		return err
	}
	s.log.Info("TLS certificate reloaded", "cert", s.guard.tls.certFile)
	return nil
}

// certDevice maps a verified client certificate to a registered device:
// the DNS SANs and the subject CN are candidates, and exactly one distinct
// registered device must match.
func (s *Server) certDevice(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false
	}
	leaf := cs.PeerCertificates[0]
	names := append([]string{}, leaf.DNSNames...)
	names = append(names, leaf.Subject.CommonName)
	found := ""
	for _, n := range names {
		if n == "" || !ValidName(n) || !s.creds.hasDevice(n) {
			continue
		}
		if found != "" && found != n {
			s.log.Warn("client certificate names several devices; refused", "a", found, "b", n)
			return "", false
		}
		found = n
	}
	return found, found != ""
}
