package media_test

import (
	"bytes"
	"encoding/json"
	"image/png"
	"strings"
	"testing"

	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

const fedMedia = "/_matrix/federation/v1/media"

// TestFederationDownload: other servers download our media from the
// authenticated federation endpoints as multipart/mixed (metadata JSON,
// then the content); requests without a valid X-Matrix signature get 401.
func TestFederationDownload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		img := pngBytes(t, 120, 80)
		id := e.upload(e.alice, "image/png", "cat.png", img)
		text := e.upload(e.alice, "text/html", "page.html", []byte("<b>hi</b>"))

		resp, body := e.signedGet(fedMedia + "/download/" + id)
		if resp.StatusCode != 200 {
			t.Fatalf("download: %d %s", resp.StatusCode, body)
		}
		meta, hdr, data := readMultipart(t, resp, body)
		if meta != "{}" || !bytes.Equal(data, img) {
			t.Errorf("download: metadata %q, %d bytes (want %d)", meta, len(data), len(img))
		}
		if hdr.Get("Content-Type") != "image/png" || hdr.Get("Content-Disposition") != `inline; filename="cat.png"` {
			t.Errorf("content part headers: %v", hdr)
		}
		resp, body = e.signedGet(fedMedia + "/download/" + text)
		if _, hdr, _ = readMultipart(t, resp, body); hdr.Get("Content-Disposition") != `attachment; filename="page.html"` {
			t.Errorf("html part disposition: %q", hdr.Get("Content-Disposition"))
		}

		resp, body = e.signedGet(fedMedia + "/thumbnail/" + id + "?width=32&height=32&method=crop")
		if resp.StatusCode != 200 {
			t.Fatalf("thumbnail: %d %s", resp.StatusCode, body)
		}
		_, hdr, data = readMultipart(t, resp, body)
		if cfg, err := png.DecodeConfig(bytes.NewReader(data)); err != nil || cfg.Width != 32 || cfg.Height != 32 ||
			hdr.Get("Content-Type") != "image/png" {
			t.Errorf("thumbnail: %+v %v %v", cfg, err, hdr)
		}

		bad := []struct {
			name, path   string
			status       int
			code         string
			unauthorized bool
		}{
			{"unknown media", "/download/nosuchmediaid", 404, "M_NOT_FOUND", false},
			{"invalid media id", "/download/bad.id", 404, "M_NOT_FOUND", false},
			{"thumbnail of unknown media", "/thumbnail/nosuchmediaid?width=32&height=32", 404, "M_NOT_FOUND", false},
			{"thumbnail without width", "/thumbnail/" + id + "?height=32", 400, "M_MISSING_PARAM", false},
			{"thumbnail with bad method", "/thumbnail/" + id + "?width=32&height=32&method=zoom", 400, "M_INVALID_PARAM", false},
			{"thumbnail of text", "/thumbnail/" + text + "?width=32&height=32", 404, "M_NOT_FOUND", false},
			{"bad timeout_ms", "/download/" + id + "?timeout_ms=-1", 400, "M_INVALID_PARAM", false},
			{"unsigned download", "/download/" + id, 401, "M_UNAUTHORIZED", true},
			{"unsigned thumbnail", "/thumbnail/" + id + "?width=32&height=32", 401, "M_UNAUTHORIZED", true},
		}
		for _, c := range bad {
			if c.unauthorized {
				resp, body = e.do("GET", fedMedia+c.path, "", nil, nil)
			} else {
				resp, body = e.signedGet(fedMedia + c.path)
			}
			wantError(t, c.name, resp, body, c.status, c.code)
		}
		// A signature by a key the server does not know is refused.
		other := e.origin
		e.origin = mustSigningKey(t)
		resp, body = e.signedGet(fedMedia + "/download/" + id)
		wantError(t, "unknown key", resp, body, 401, "M_UNAUTHORIZED")
		e.origin = other
		// An access token is no federation authentication.
		resp, body = e.do("GET", fedMedia+"/download/"+id, e.alice, nil, nil)
		wantError(t, "access token", resp, body, 401, "M_UNAUTHORIZED")

		// Quarantined media is refused, as Synapse does (404).
		if resp, body := e.do("POST", "/_synapse/admin/v1/media/quarantine/"+serverName+"/"+id, e.admin, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("quarantine: %d %s", resp.StatusCode, body)
		}
		resp, body = e.signedGet(fedMedia + "/download/" + id)
		wantError(t, "quarantined", resp, body, 404, "M_NOT_FOUND")
		resp, body = e.signedGet(fedMedia + "/thumbnail/" + id + "?width=32&height=32")
		wantError(t, "quarantined thumbnail", resp, body, 404, "M_NOT_FOUND")
	})
}

// TestFederationDownloadPending: an id reserved by /create and not yet
// uploaded answers 504 M_NOT_YET_UPLOADED after timeout_ms.
func TestFederationDownloadPending(t *testing.T) {
	e := newEnv(t, storagetest.NewDB(t, storage.SQLite), nil)
	resp, body := e.do("POST", "/_matrix/media/v1/create", e.alice, nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimPrefix(out.ContentURI, "mxc://"+serverName+"/")
	resp, body = e.signedGet(fedMedia + "/download/" + id + "?timeout_ms=0")
	wantError(t, "pending", resp, body, 504, "M_NOT_YET_UPLOADED")
}
