package relay

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"path"
	"time"

	"github.com/tetherhq/tether/protocol"
)

// webFS holds the dashboard: plain HTML, JS and CSS, no build step, no
// external assets, so the relay binary is all a browser needs.
//
//go:embed web/index.html web/app.js web/style.css
var webFS embed.FS

// dashboardCSP allows the page its own scripts, styles and sockets and
// nothing else: no inline script, no third-party origin, no framing.
// connect-src 'self' covers ws:// and wss:// to the relay itself.
const dashboardCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// asset is one embedded dashboard file, ready to serve.
type asset struct {
	name  string
	ctype string
	etag  string
	body  []byte
}

// dashboardAssets maps URL paths to the embedded files.
var dashboardAssets = func() map[string]asset {
	files := map[string]string{
		"/":          "index.html",
		"/app.js":    "app.js",
		"/style.css": "style.css",
	}
	types := map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
	}
	out := make(map[string]asset, len(files))
	for p, name := range files {
		b, err := webFS.ReadFile("web/" + name)
		if err != nil {
			panic("relay: dashboard asset missing: " + name)
		}
		sum := sha256.Sum256(b)
		out[p] = asset{name: name, ctype: types[path.Ext(name)], etag: `"` + hex.EncodeToString(sum[:8]) + `"`, body: b}
	}
	return out
}()

// handleDashboard serves the dashboard's files. They are public: the page
// asks for a client key and keeps it in the tab's sessionStorage.
func (s *Server) handleDashboard(w http.ResponseWriter, r *http.Request) {
	a, ok := dashboardAssets[r.URL.Path]
	if !ok {
		writeError(w, http.StatusNotFound, protocol.CodeNotFound, "no such endpoint")
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache") // revalidate: a relay upgrade changes the files
	h.Set("ETag", a.etag)
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.body))
}
