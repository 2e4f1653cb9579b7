package media_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"

	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/media"
	"ganglion/internal/testutil/testca"
)

// originName is the server the env's federation requests come from (and
// the remote media tests' outbound client signs as serverName).
const originName = "origin.test"

// staticKeys is a VerifyKeyFinder over fixed keys.
type staticKeys map[string]events.SigningKey

func (k staticKeys) VerifyKey(_ context.Context, server, keyID string, _ int64) (ed25519.PublicKey, error) {
	if key, ok := k[server]; ok && key.ID == keyID {
		return key.Public(), nil
	}
	return nil, fmt.Errorf("no key %s of %s", keyID, server)
}

func mustSigningKey(t testing.TB) events.SigningKey {
	t.Helper()
	k, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// remoteItem is one media item of the fake remote server; mode says how
// its federation download answers.
type remoteItem struct {
	data              []byte
	contentType, name string
	mode              string // "" (multipart), "location", "legacy…", "fail", "gate"
}

// fakeRemote is another homeserver's media repository on loopback TLS:
// it serves the authenticated federation download (checking our X-Matrix
// signature), the legacy download and plain URLs for Location answers,
// and counts what it was asked.
type fakeRemote struct {
	t    testing.TB
	name string // its server name: 127.0.0.1:port
	ca   *testca.CA
	gate chan struct{} // "gate" items answer once it is closed

	mu          sync.Mutex
	items       map[string]remoteItem
	hits        map[string]int // by kind: federation, legacy, raw, unauthorized
	legacyQuery url.Values
}

func newFakeRemote(t testing.TB, ourKey events.SigningKey) *fakeRemote {
	t.Helper()
	fr := &fakeRemote{t: t, ca: testca.New(t), gate: make(chan struct{}), items: map[string]remoteItem{}, hits: map[string]int{}}
	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = fr.ca.ServerTLS(t, "127.0.0.1")
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	fr.name = "127.0.0.1:" + port
	auth := &xmatrix.Authenticator{ServerName: fr.name, Keys: staticKeys{serverName: ourKey}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/federation/v1/media/download/{id}", func(w http.ResponseWriter, r *http.Request) {
		if _, err := auth.Authenticate(r); err != nil {
			fr.count("unauthorized")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errcode":"M_UNAUTHORIZED","error":"bad signature"}`)
			return
		}
		fr.count("federation")
		it, ok := fr.item(r.PathValue("id"))
		switch {
		case !ok:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"Not found"}`)
			return
		case it.mode == "legacy":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
			return
		case it.mode == "legacy-bare404":
			http.NotFound(w, r)
			return
		case it.mode == "legacy-400":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`)
			return
		case it.mode == "legacy-405":
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		case it.mode == "fail":
			w.WriteHeader(http.StatusInternalServerError)
			return
		case it.mode == "gate":
			<-fr.gate
		}
		mw := multipart.NewWriter(w)
		w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
		meta, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
		io.WriteString(meta, `{}`)
		if it.mode == "location" {
			mw.CreatePart(textproto.MIMEHeader{"Location": {"https://" + fr.name + "/raw/" + r.PathValue("id")}})
		} else {
			part, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {it.contentType},
				"Content-Disposition": {mime.FormatMediaType("attachment", map[string]string{"filename": it.name})}})
			part.Write(it.data)
		}
		mw.Close()
	})
	mux.HandleFunc("GET /_matrix/media/v3/download/{server}/{id}", func(w http.ResponseWriter, r *http.Request) {
		fr.count("legacy")
		fr.mu.Lock()
		fr.legacyQuery = r.URL.Query()
		fr.mu.Unlock()
		it, ok := fr.item(r.PathValue("id"))
		if !ok || !strings.HasPrefix(it.mode, "legacy") || r.PathValue("server") != fr.name {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"Not found"}`)
			return
		}
		w.Header().Set("Content-Type", it.contentType)
		w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": it.name}))
		w.Write(it.data)
	})
	mux.HandleFunc("GET /raw/{id}", func(w http.ResponseWriter, r *http.Request) {
		fr.count("raw")
		it, ok := fr.item(r.PathValue("id"))
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", it.contentType)
		w.Write(it.data)
	})
	srv.Config.Handler = mux
	srv.StartTLS()
	t.Cleanup(func() {
		fr.release()
		srv.Close()
	})
	return fr
}

func (fr *fakeRemote) add(id string, it remoteItem) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.items[id] = it
}

func (fr *fakeRemote) item(id string) (remoteItem, bool) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	it, ok := fr.items[id]
	return it, ok
}

func (fr *fakeRemote) count(kind string) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.hits[kind]++
}

func (fr *fakeRemote) hitsOf(kind string) int {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.hits[kind]
}

// release opens the gate (once).
func (fr *fakeRemote) release() {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	select {
	case <-fr.gate:
	default:
		close(fr.gate)
	}
}

// federationClient is an outbound client of serverName signing with key,
// trusting the fake remote's CA; tweak adjusts its options.
func federationClient(t testing.TB, key events.SigningKey, ca *testca.CA, tweak func(*client.Options)) *client.Client {
	t.Helper()
	o := client.Options{ServerName: serverName, Key: key, RootCAs: ca.Pool(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tweak != nil {
		tweak(&o)
	}
	c, err := client.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// withRemote wires e's repository to fetch from a new fake remote and
// returns the remote.
func withRemote(t testing.TB, e *env, settings media.RemoteSettings, tweak func(*client.Options)) *fakeRemote {
	t.Helper()
	key := mustSigningKey(t)
	fr := newFakeRemote(t, key)
	e.svc.SetFederation(federationClient(t, key, fr.ca, tweak), settings)
	return fr
}

// signedGet sends a GET to e's federation endpoints signed by the origin.
func (e *env) signedGet(path string) (*http.Response, []byte) {
	e.t.Helper()
	p, err := xmatrix.Sign(xmatrix.Request{Method: "GET", URI: path, Origin: originName, Destination: serverName}, e.origin)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do("GET", path, "", nil, map[string]string{"Authorization": p.Format()})
}

// readMultipart parses a federation media answer: the JSON metadata and
// the content part's headers and bytes.
func readMultipart(t testing.TB, resp *http.Response, body []byte) (meta string, hdr textproto.MIMEHeader, data []byte) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type = %q (%v)", resp.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
	p1, err := mr.NextPart()
	if err != nil {
		t.Fatalf("metadata part: %v", err)
	}
	if ct := p1.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("metadata part Content-Type = %q", ct)
	}
	m, _ := io.ReadAll(p1)
	p2, err := mr.NextPart()
	if err != nil {
		t.Fatalf("content part: %v", err)
	}
	data, err = io.ReadAll(p2)
	if err != nil {
		t.Fatalf("content part: %v", err)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("after the content part: %v, want EOF", err)
	}
	return string(m), p2.Header, data
}
