package e2e_test

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/testutil/testca"
)

// mediaRemote is another homeserver on loopback TLS that publishes its key
// (so that our keyring verifies its requests) and serves one file on the
// authenticated federation media endpoint, counting the requests, which
// must come signed by us.
type mediaRemote struct {
	name     string
	key      events.SigningKey
	hits     atomic.Int64
	badAuths atomic.Int64
}

func startMediaRemote(t *testing.T, ca *testca.CA, fileID string, content []byte) *mediaRemote {
	t.Helper()
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	r := &mediaRemote{key: key}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.name = ln.Addr().String()
	local, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: r.name, Key: r.key, RefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case strings.HasPrefix(req.URL.Path, "/_matrix/key/v2/server"):
			body, err := local.Response()
			if err != nil {
				http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		case req.URL.Path == "/_matrix/federation/v1/media/download/"+fileID:
			r.hits.Add(1)
			p, err := xmatrix.ParseHeader(req.Header.Get("Authorization"))
			if err != nil || p.Origin != serverName || p.Destination != r.name {
				r.badAuths.Add(1)
				http.Error(w, `{"errcode":"M_UNAUTHORIZED"}`, http.StatusUnauthorized)
				return
			}
			mw := multipart.NewWriter(w)
			w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
			meta, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
			_, _ = io.WriteString(meta, "{}")
			part, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain"},
				"Content-Disposition": {`inline; filename="remote.txt"`}})
			_, _ = part.Write(content)
			_ = mw.Close()
		default:
			http.Error(w, `{"errcode":"M_NOT_FOUND"}`, http.StatusNotFound)
		}
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = ca.ServerTLS(t, "127.0.0.1")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return r
}

// TestFederationMediaThroughRouter: through the fleet's router, the media
// worker serves our media to another server on the authenticated
// federation endpoint (multipart/mixed; unsigned requests 401), and
// fetches the other server's media for our user once, serving it from
// the cache afterwards.
func TestFederationMediaThroughRouter(t *testing.T) {
	ca := testca.New(t)
	remoteContent := []byte("a file of the other server")
	remote := startMediaRemote(t, ca, "remotefile", remoteContent)
	srv := startFrontServer(t, engineFleetRouter, "router",
		withKey("federation_custom_ca_list", []string{ca.WriteCA(t, t.TempDir())}),
		withKey("ip_range_whitelist", []string{"127.0.0.1"}),
	)
	ctx := testContext(t)
	base := srv.fleet.front.url
	alice := srv.register(t, ctx, "fedmedia-alice")

	// Inbound: the other server downloads alice's upload.
	content := []byte("alice's file, for another server")
	up, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: content, ContentType: "text/plain", FileName: "a.txt"})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	uri := "/_matrix/federation/v1/media/download/" + up.ContentURI.FileID
	for _, signed := range []bool{true, false} {
		req, err := http.NewRequestWithContext(ctx, "GET", base+uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		if signed {
			p, err := xmatrix.Sign(xmatrix.Request{Method: "GET", URI: uri, Origin: remote.name, Destination: serverName}, remote.key)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", p.Format())
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !signed {
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "M_UNAUTHORIZED") {
				t.Errorf("unsigned federation download: %d %s", resp.StatusCode, body)
			}
			continue
		}
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if resp.StatusCode != http.StatusOK || err != nil || mt != "multipart/mixed" {
			t.Fatalf("federation download: %d %s %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		meta, err := mr.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := io.ReadAll(meta); string(m) != "{}" {
			t.Errorf("metadata part %q", m)
		}
		part, err := mr.NextPart()
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(part); !bytes.Equal(got, content) || part.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("content part: %q (%s)", got, part.Header.Get("Content-Type"))
		}
	}

	// Outbound: alice downloads the other server's file, twice.
	mxc := id.ContentURI{Homeserver: remote.name, FileID: "remotefile"}
	for range 2 {
		data, err := alice.DownloadBytes(ctx, mxc)
		if err != nil || !bytes.Equal(data, remoteContent) {
			t.Fatalf("remote download: %q (%v)", data, err)
		}
	}
	if n, bad := remote.hits.Load(), remote.badAuths.Load(); n != 1 || bad != 0 {
		t.Errorf("the other server was asked %d times (%d without our signature), want once", n, bad)
	}
	if _, err := alice.DownloadBytes(ctx, id.ContentURI{Homeserver: remote.name, FileID: "nothing"}); err == nil ||
		!strings.Contains(err.Error(), "M_NOT_FOUND") {
		t.Errorf("unknown remote media: %v", err)
	}
}
