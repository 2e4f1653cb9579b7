package mxhttp

import (
	"net/http"
	"strings"
)

// Mux is an http.ServeMux whose "no route" answers are Matrix errors:
// 404 M_UNRECOGNIZED for unknown paths and 405 M_UNRECOGNIZED for a known
// path with the wrong method, as the spec requires. It also answers CORS
// preflights for every client path.
type Mux struct {
	*http.ServeMux
	// OnUnrecognized, if set, hears of every request answered 404 or 405
	// M_UNRECOGNIZED, for logs and metrics.
	OnUnrecognized func(r *http.Request, status int)
}

func NewMux() *Mux { return &Mux{ServeMux: http.NewServeMux()} }

func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setCORS(w)
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusOK)
		return
	}
	h, pattern := m.ServeMux.Handler(r)
	if pattern != "" {
		// Serve through the mux itself: only it fills in r.PathValue.
		m.ServeMux.ServeHTTP(w, r)
		return
	}
	// The stdlib handler decides between 404, 405 and redirects; capture its
	// status and answer in Matrix form instead of plain text.
	cw := &captureWriter{header: http.Header{}}
	h.ServeHTTP(cw, r)
	switch cw.status {
	case http.StatusMethodNotAllowed:
		m.unrecognized(r, http.StatusMethodNotAllowed)
		if allow := cw.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		WriteError(w, Unrecognized(http.StatusMethodNotAllowed, "Method %s not allowed on %s", r.Method, r.URL.Path))
	case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		for k, v := range cw.header {
			w.Header()[k] = v
		}
		w.WriteHeader(cw.status)
	default:
		m.unrecognized(r, http.StatusNotFound)
		WriteError(w, Unrecognized(http.StatusNotFound, "Unrecognized request: %s %s", r.Method, r.URL.Path))
	}
}

func (m *Mux) unrecognized(r *http.Request, status int) {
	if m.OnUnrecognized != nil {
		m.OnUnrecognized(r, status)
	}
}

func setCORS(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization, Date")
}

type captureWriter struct {
	header http.Header
	status int
}

func (c *captureWriter) Header() http.Header { return c.header }
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(b), nil
}
func (c *captureWriter) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
}

// ClientPrefixes are the path prefixes a client endpoint is served under:
// v3 is current, r0 is still used by older clients and Synapse serves both.
var ClientPrefixes = []string{"/_matrix/client/v3", "/_matrix/client/r0"}

// HandleClient registers h for "METHOD /path" under every client prefix.
// path starts with "/" and may use {wildcards}.
func (m *Mux) HandleClient(method, path string, h http.Handler) {
	for _, p := range ClientPrefixes {
		m.Handle(method+" "+p+path, h)
	}
}

// HandleClientV3Only is for endpoints that never existed under r0.
func (m *Mux) HandleClientV3Only(method, path string, h http.Handler) {
	m.Handle(method+" "+ClientPrefixes[0]+path, h)
}

// TrimPrefixes is used by tests and the router to compare client paths.
func TrimPrefixes(path string) string {
	for _, p := range ClientPrefixes {
		if strings.HasPrefix(path, p) {
			return strings.TrimPrefix(path, p)
		}
	}
	return path
}
