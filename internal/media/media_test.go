package media_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/gif"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"ganglion/internal/media"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

const authed = "/_matrix/client/v1/media"

func TestUploadDownloadRoundTrip(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		cases := []struct {
			name, contentType, filename string
			data                        []byte
			disposition                 string
		}{
			{"png", "image/png", "cat.png", pngBytes(t, 64, 48), `inline; filename="cat.png"`},
			{"jpeg", "image/jpeg", "photo.jpg", jpegBytes(t, 200, 100), `inline; filename="photo.jpg"`},
			{"animated gif", "image/gif", "anim.gif", animatedGIF(t, 40, 30, 3), `inline; filename="anim.gif"`},
			{"webp", "image/webp", "still.webp", webpStill(t, 50, 40, 0), `inline; filename="still.webp"`},
			{"animated webp", "image/webp", "anim.webp", animatedWebP(t, 50, 40, 2), `inline; filename="anim.webp"`},
			{"html is an attachment", "text/html", "page.html", []byte("<script>alert(1)</script>"), `attachment; filename="page.html"`},
			{"svg is an attachment", "image/svg+xml", "x.svg", []byte("<svg/>"), `attachment; filename="x.svg"`},
			{"non-ascii name", "text/plain", "r%C3%A9sum%C3%A9%20%22x%22.txt", []byte("hi"),
				`inline; filename*=utf-8''r%C3%A9sum%C3%A9%20%22x%22.txt`},
			{"empty file", "application/octet-stream", "", nil, "attachment"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				id := e.upload(e.alice, c.contentType, c.filename, c.data)
				resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id, e.bob, nil, nil)
				if resp.StatusCode != 200 || !bytes.Equal(body, c.data) {
					t.Fatalf("download: %d, %d bytes (want %d)", resp.StatusCode, len(body), len(c.data))
				}
				if got := resp.Header.Get("Content-Disposition"); got != c.disposition {
					t.Errorf("Content-Disposition = %q, want %q", got, c.disposition)
				}
				wantCT := c.contentType
				if strings.HasPrefix(wantCT, "text/") {
					wantCT += "; charset=UTF-8"
				}
				if got := resp.Header.Get("Content-Type"); got != wantCT {
					t.Errorf("Content-Type = %q, want %q", got, wantCT)
				}
				if got := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(got, "sandbox; default-src 'none'; script-src 'none'") {
					t.Errorf("Content-Security-Policy = %q", got)
				}
				if got := resp.Header.Get("Cross-Origin-Resource-Policy"); got != "cross-origin" {
					t.Errorf("Cross-Origin-Resource-Policy = %q", got)
				}
				// The file name in the path overrides the uploaded one.
				resp, _ = e.do("GET", authed+"/download/"+serverName+"/"+id+"/other.bin", e.bob, nil, nil)
				if got := resp.Header.Get("Content-Disposition"); !strings.HasSuffix(got, `filename="other.bin"`) {
					t.Errorf("Content-Disposition with path name = %q", got)
				}
				// Uploaded under enable_authenticated_media: the legacy
				// unauthenticated endpoints do not serve it.
				resp, body = e.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+id, "", nil, nil)
				wantError(t, "legacy download of authenticated media", resp, body, 404, "M_NOT_FOUND")
			})
		}
		// Range requests are answered from the file.
		id := e.upload(e.alice, "text/plain", "", []byte("0123456789"))
		resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id, e.alice, nil, map[string]string{"Range": "bytes=2-4"})
		if resp.StatusCode != http.StatusPartialContent || string(body) != "234" {
			t.Fatalf("range: %d %q", resp.StatusCode, body)
		}
		// The authenticated endpoints need a token.
		resp, body = e.do("GET", authed+"/download/"+serverName+"/"+id, "", nil, nil)
		wantError(t, "authenticated download without token", resp, body, 401, "M_MISSING_TOKEN")
		resp, body = e.do("GET", authed+"/config", e.alice, nil, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"m.upload.size":52428800`) {
			t.Fatalf("config: %d %s", resp.StatusCode, body)
		}
	})
}

// Media uploaded before enable_authenticated_media was turned on stays on
// the legacy endpoints; media uploaded after it does not.
func TestLegacyMediaFreeze(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	before := newEnv(t, db, func(s *media.Settings) { s.AuthenticatedMedia = false })
	old := before.upload(before.alice, "image/png", "", pngBytes(t, 8, 8))
	resp, _ := before.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+old, "", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("legacy download with authenticated media off: %d", resp.StatusCode)
	}
	// Same database, repository restarted with the option on.
	after := newEnvShared(t, before, func(s *media.Settings) { s.AuthenticatedMedia = true })
	for _, p := range []string{"/_matrix/media/v3/download/", "/_matrix/media/r0/download/"} {
		if resp, _ := after.do("GET", p+serverName+"/"+old, "", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("%s of media uploaded before the freeze: %d", p, resp.StatusCode)
		}
	}
	if resp, _ := after.do("GET", "/_matrix/media/v3/thumbnail/"+serverName+"/"+old+"?width=8&height=8", "", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("legacy thumbnail of media uploaded before the freeze: %d", resp.StatusCode)
	}
	fresh := after.upload(after.alice, "image/png", "", pngBytes(t, 8, 8))
	resp, body := after.do("GET", "/_matrix/media/v3/download/"+serverName+"/"+fresh, "", nil, nil)
	wantError(t, "legacy download after the freeze", resp, body, 404, "M_NOT_FOUND")
	resp, body = after.do("GET", "/_matrix/media/v3/thumbnail/"+serverName+"/"+fresh+"?width=8&height=8", "", nil, nil)
	wantError(t, "legacy thumbnail after the freeze", resp, body, 404, "M_NOT_FOUND")
	if resp, _ := after.do("GET", authed+"/download/"+serverName+"/"+fresh, after.bob, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("authenticated download: %d", resp.StatusCode)
	}
}

func decodeConfig(t *testing.T, body []byte) (image.Config, string) {
	t.Helper()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("thumbnail does not decode: %v", err)
	}
	return cfg, format
}

func TestThumbnails(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		png := e.upload(e.alice, "image/png", "", pngBytes(t, 1000, 500))
		jpg := e.upload(e.alice, "image/jpeg", "", jpegBytes(t, 1000, 500))
		gifID := e.upload(e.alice, "image/gif", "", animatedGIF(t, 400, 300, 3))
		webpID := e.upload(e.alice, "image/webp", "", animatedWebP(t, 400, 300, 2))

		// Every configured size was made at upload.
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM media_thumbnails WHERE media_id = $1`, png).Scan(&n); err != nil || n != 5 {
			t.Fatalf("pre-generated thumbnails = %d, %v; want 5", n, err)
		}
		cases := []struct {
			name, id, query string
			wantW, wantH    int
			wantType        string
		}{
			// Not made to measure: the smallest configured size at least as big.
			{"png crop 32", png, "width=32&height=32&method=crop", 32, 32, "image/png"},
			{"png crop 50 gets 96", png, "width=50&height=50&method=crop", 96, 96, "image/png"},
			{"png scale 300x200 gets 320x240 box", png, "width=300&height=200&method=scale", 320, 160, "image/png"},
			{"jpeg stays jpeg", jpg, "width=640&height=480", 640, 320, "image/jpeg"},
			{"gif still", gifID, "width=96&height=96&method=crop", 96, 96, "image/png"},
			{"webp still", webpID, "width=320&height=240", 320, 240, "image/png"},
			{"gif animated", gifID, "width=96&height=96&method=crop&animated=true", 96, 96, "image/gif"},
			{"webp animated", webpID, "width=320&height=240&animated=true", 320, 240, "image/gif"},
			{"png animated is a still", png, "width=32&height=32&method=crop&animated=true", 32, 32, "image/png"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				for _, path := range []string{authed + "/thumbnail/"} {
					resp, body := e.do("GET", path+serverName+"/"+c.id+"?"+c.query, e.bob, nil, nil)
					if resp.StatusCode != 200 {
						t.Fatalf("thumbnail: %d %s", resp.StatusCode, body)
					}
					if ct := resp.Header.Get("Content-Type"); ct != c.wantType {
						t.Fatalf("Content-Type = %q, want %q", ct, c.wantType)
					}
					cfg, _ := decodeConfig(t, body)
					if cfg.Width != c.wantW || cfg.Height != c.wantH {
						t.Fatalf("thumbnail is %dx%d, want %dx%d", cfg.Width, cfg.Height, c.wantW, c.wantH)
					}
					if c.wantType == "image/gif" {
						g, err := gif.DecodeAll(bytes.NewReader(body))
						if err != nil || len(g.Image) < 2 {
							t.Fatalf("animated thumbnail has %d frames (%v)", len(g.Image), err)
						}
					}
				}
			})
		}
	})
}

func TestDynamicThumbnails(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, func(s *media.Settings) { s.DynamicThumbnails = true })
	id := e.upload(e.alice, "image/png", "", pngBytes(t, 1000, 500))
	for _, c := range []struct {
		query        string
		wantW, wantH int
	}{
		{"width=50&height=50&method=crop", 50, 50},
		{"width=123&height=77&method=crop", 123, 77},
		{"width=200&height=200&method=scale", 200, 100},
		{"width=4000&height=4000&method=scale", 1000, 500}, // never enlarged
	} {
		resp, body := e.do("GET", authed+"/thumbnail/"+serverName+"/"+id+"?"+c.query, e.alice, nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", c.query, resp.StatusCode, body)
		}
		cfg, _ := decodeConfig(t, body)
		if cfg.Width != c.wantW || cfg.Height != c.wantH {
			t.Errorf("%s: %dx%d, want %dx%d", c.query, cfg.Width, cfg.Height, c.wantW, c.wantH)
		}
	}
}

func TestBadInput(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, func(s *media.Settings) { s.MaxUploadSize = 1000 })
	id := e.upload(e.alice, "image/png", "", pngBytes(t, 10, 10))
	txt := e.upload(e.alice, "text/plain", "", []byte("not an image"))
	big := strings.Repeat("x", 1001)
	cases := []struct {
		name, method, path, token string
		body                      io.Reader
		status                    int
		code                      string
	}{
		{"traversal in media id", "GET", authed + "/download/" + serverName + "/..%2F..%2Fetc%2Fpasswd", e.alice, nil, 404, "M_NOT_FOUND"},
		{"dots in media id", "GET", authed + "/download/" + serverName + "/a.b", e.alice, nil, 404, "M_NOT_FOUND"},
		{"encoded slash in server", "GET", authed + "/download/..%2F" + serverName + "/" + id, e.alice, nil, 404, "M_NOT_FOUND"},
		{"unknown media", "GET", authed + "/download/" + serverName + "/nosuchmedia", e.alice, nil, 404, "M_NOT_FOUND"},
		{"remote server", "GET", authed + "/download/other.example/" + id, e.alice, nil, 404, "M_NOT_FOUND"},
		{"legacy remote server", "GET", "/_matrix/media/v3/download/other.example/" + id, "", nil, 404, "M_NOT_FOUND"},
		{"control char in path file name", "GET", authed + "/download/" + serverName + "/" + id + "/a%0Ab", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"control char in upload file name", "POST", "/_matrix/media/v3/upload?filename=a%0Db", e.alice, strings.NewReader("x"), 400, "M_INVALID_PARAM"},
		{"file name of dots", "POST", "/_matrix/media/v3/upload?filename=..", e.alice, strings.NewReader("x"), 400, "M_INVALID_PARAM"},
		{"thumbnail width zero", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=0&height=10", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail width negative", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=-5&height=10", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail width not a number", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=abc&height=10", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail width huge", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=100000&height=10", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail height missing", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=10", e.alice, nil, 400, "M_MISSING_PARAM"},
		{"thumbnail bad method", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=10&height=10&method=stretch", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail bad animated", "GET", authed + "/thumbnail/" + serverName + "/" + id + "?width=10&height=10&animated=yes", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"thumbnail of text", "GET", authed + "/thumbnail/" + serverName + "/" + txt + "?width=10&height=10", e.alice, nil, 404, "M_NOT_FOUND"},
		{"bad timeout_ms", "GET", authed + "/download/" + serverName + "/" + id + "?timeout_ms=soon", e.alice, nil, 400, "M_INVALID_PARAM"},
		{"oversize with length", "POST", "/_matrix/media/v3/upload", e.alice, strings.NewReader(big), 413, "M_TOO_LARGE"},
		{"oversize chunked", "POST", "/_matrix/media/v3/upload", e.alice, io.MultiReader(strings.NewReader(big)), 413, "M_TOO_LARGE"},
		{"upload without token", "POST", "/_matrix/media/v3/upload", "", strings.NewReader("x"), 401, "M_MISSING_TOKEN"},
		{"upload with bad token", "POST", "/_matrix/media/v3/upload", "syt_bad", strings.NewReader("x"), 401, "M_UNKNOWN_TOKEN"},
		{"config without token", "GET", authed + "/config", "", nil, 401, "M_MISSING_TOKEN"},
		{"preview_url disabled", "GET", authed + "/preview_url?url=http://example.com", e.alice, nil, 404, "M_UNRECOGNIZED"},
		{"put to another server", "PUT", "/_matrix/media/v3/upload/other.example/abc", e.alice, strings.NewReader("x"), 404, "M_NOT_FOUND"},
		{"put to unknown id", "PUT", "/_matrix/media/v3/upload/" + serverName + "/nosuchid", e.alice, strings.NewReader("x"), 404, "M_NOT_FOUND"},
		{"put to traversal id", "PUT", "/_matrix/media/v3/upload/" + serverName + "/..%2Fx", e.alice, strings.NewReader("x"), 404, "M_NOT_FOUND"},
		{"put to uploaded id", "PUT", "/_matrix/media/v3/upload/" + serverName + "/" + id, e.alice, strings.NewReader("x"), 409, "M_CANNOT_OVERWRITE_MEDIA"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := e.do(c.method, c.path, c.token, c.body, nil)
			wantError(t, c.name, resp, body, c.status, c.code)
		})
	}
	// A path file name with directories is reduced to its last element.
	resp, _ := e.do("GET", authed+"/download/"+serverName+"/"+id+"/..%2F..%2Fetc%2Fpasswd", e.alice, nil, nil)
	if got := resp.Header.Get("Content-Disposition"); resp.StatusCode != 200 || got != `inline; filename="passwd"` {
		t.Fatalf("traversal in file name: %d %q", resp.StatusCode, got)
	}
	// Nothing of the refused uploads was stored.
	var n int
	if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM media`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("media rows = %d, %v; want 2", n, err)
	}
}

func TestAsyncUpload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, func(s *media.Settings) { s.MaxPendingUploads = 3 })
		create := func(token string) (string, int64) {
			t.Helper()
			resp, body := e.do("POST", "/_matrix/media/v1/create", token, nil, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("create: %d %s", resp.StatusCode, body)
			}
			var out struct {
				ContentURI      string `json:"content_uri"`
				UnusedExpiresAt int64  `json:"unused_expires_at"`
			}
			if err := json.Unmarshal(body, &out); err != nil {
				t.Fatal(err)
			}
			return strings.TrimPrefix(out.ContentURI, "mxc://"+serverName+"/"), out.UnusedExpiresAt
		}
		id, expires := create(e.alice)
		if d := time.Until(time.UnixMilli(expires)); d < 23*time.Hour || d > 25*time.Hour {
			t.Fatalf("unused_expires_at in %v, want about 24h", d)
		}
		// Not uploaded yet: a download that will not wait gets 504.
		resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id+"?timeout_ms=0", e.bob, nil, nil)
		wantError(t, "download before upload", resp, body, 504, "M_NOT_YET_UPLOADED")

		// A download waiting for the content gets it once it arrives.
		var wg sync.WaitGroup
		var waited []byte
		var waitedStatus int
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id+"?timeout_ms=30000", e.bob, nil, nil)
			waited, waitedStatus = body, resp.StatusCode
		}()
		resp, body = e.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/"+id, e.bob, strings.NewReader("late"), nil)
		wantError(t, "upload to another user's id", resp, body, 403, "M_FORBIDDEN")
		resp, body = e.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/"+id+"?filename=late.txt", e.alice,
			strings.NewReader("late content"), map[string]string{"Content-Type": "text/plain"})
		if resp.StatusCode != 200 {
			t.Fatalf("async upload: %d %s", resp.StatusCode, body)
		}
		wg.Wait()
		if waitedStatus != 200 || string(waited) != "late content" {
			t.Fatalf("waiting download: %d %q", waitedStatus, waited)
		}
		resp, body = e.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/"+id, e.alice, strings.NewReader("again"), nil)
		wantError(t, "second upload", resp, body, 409, "M_CANNOT_OVERWRITE_MEDIA")

		// At most max_pending_media_uploads reserved ids per user.
		var pending []string
		for range 3 {
			p, _ := create(e.bob)
			pending = append(pending, p)
		}
		resp, body = e.do("POST", "/_matrix/media/v1/create", e.bob, nil, nil)
		wantError(t, "too many pending", resp, body, 429, "M_LIMIT_EXCEEDED")

		// Unused ids expire: the background job deletes them, and an
		// upload to an expired id is refused.
		e.svc.SetClock(func() time.Time { return time.Now().Add(25 * time.Hour) })
		resp, body = e.do("PUT", "/_matrix/media/v3/upload/"+serverName+"/"+pending[0], e.bob, strings.NewReader("x"), nil)
		wantError(t, "upload to expired id", resp, body, 404, "M_NOT_FOUND")
		if err := e.svc.ExpireUnused(t.Context()); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM media WHERE media_length IS NULL`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("reserved rows after expiry = %d, %v", n, err)
		}
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM media`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("media rows after expiry = %d, %v; want the uploaded one", n, err)
		}
		// The expired reservations no longer count against the limit.
		e.svc.SetClock(time.Now)
		create(e.bob)
	})
}

// infiniteReader yields n bytes of a repeating pattern without holding
// them: the test's own memory must not hide the server's.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.left)
	for i := range b[:n] {
		b[i] = byte(i*7 + int(p.left))
	}
	p.left -= n
	return int(n), nil
}

// A 50 MiB upload streams: the heap in use never grows by more than a
// small fraction of the file while it is received and stored.
func TestUploadHeapBounded(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, func(s *media.Settings) { s.MaxUploadSize = 60 << 20 })
	const size = 50 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	req, err := http.NewRequestWithContext(t.Context(), "POST", e.url+"/_matrix/media/v3/upload", &patternReader{left: size})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+e.alice)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	close(stop)
	<-sampled
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	growth := int64(peak) - int64(base)
	t.Logf("heap in use grew by at most %d KiB during a %d MiB upload", growth>>10, size>>20)
	if growth > 16<<20 {
		t.Fatalf("heap in use grew by %d MiB during a %d MiB upload: the upload is buffered", growth>>20, size>>20)
	}
	var n int64
	if err := db.Reader().QueryRowContext(t.Context(), `SELECT media_length FROM media`).Scan(&n); err != nil || n != size {
		t.Fatalf("stored length = %d, %v", n, err)
	}
}

// A client that goes away halfway through its upload leaves no row and no
// file; the retry succeeds.
func TestAbortedUpload(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db, nil)
		const size = 4 << 20
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", e.alice, size)
		if _, err := io.Copy(conn, &patternReader{left: size / 2}); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		testutil.Eventually(t, 10*time.Second, "the aborted upload's handler to finish", func() bool { return e.done.Load() == 1 })
		var n int
		if err := db.Reader().QueryRowContext(t.Context(), `SELECT count(*) FROM media`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("media rows after aborted upload = %d, %v", n, err)
		}
		if files := countFiles(t, e.dir); files != 0 {
			t.Fatalf("%d files in the store after an aborted upload", files)
		}
		data := bytes.Repeat([]byte("retry"), size/5)
		id := e.upload(e.alice, "application/octet-stream", "", data)
		resp, body := e.do("GET", authed+"/download/"+serverName+"/"+id, e.alice, nil, nil)
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("retry download: %d, %d bytes", resp.StatusCode, len(body))
		}
		if files := countFiles(t, filepath.Join(e.dir, "tmp")); files != 0 {
			t.Fatalf("%d staged files left", files)
		}
	})
}

// The pixel budget (max_image_pixels) counts every frame of an animation:
// an animated request of an animation over it gets a still thumbnail, and
// an image over it gets none.
func TestThumbnailPixelBudget(t *testing.T) {
	db := storagetest.NewDB(t, storage.SQLite)
	e := newEnv(t, db, func(s *media.Settings) {
		s.MaxImagePixels = 40*30*3 - 1
		s.DynamicThumbnails = true
	})
	anim := e.upload(e.alice, "image/gif", "", animatedGIF(t, 40, 30, 3))
	resp, body := e.do("GET", authed+"/thumbnail/"+serverName+"/"+anim+"?width=20&height=15&animated=true", e.alice, nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("animation over the budget: %d %s, want a still PNG", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if cfg, _ := decodeConfig(t, body); cfg.Width != 20 || cfg.Height != 15 {
		t.Fatalf("still is %dx%d", cfg.Width, cfg.Height)
	}
	big := e.upload(e.alice, "image/png", "", pngBytes(t, 100, 100))
	resp, body = e.do("GET", authed+"/thumbnail/"+serverName+"/"+big+"?width=20&height=20", e.alice, nil, nil)
	wantError(t, "image over the budget", resp, body, 404, "M_NOT_FOUND")
	// Corrupt images are stored (they are files) but not thumbnailed.
	bad := e.upload(e.alice, "image/gif", "", []byte("GIF89a\x01\x00\x01\x00garbage"))
	resp, body = e.do("GET", authed+"/thumbnail/"+serverName+"/"+bad+"?width=20&height=20&animated=true", e.alice, nil, nil)
	wantError(t, "corrupt gif", resp, body, 404, "M_NOT_FOUND")
}
