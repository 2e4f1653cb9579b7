package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"

	"ganglion/internal/testutil"
)

// TestMediaAvatar: a user uploads an avatar with mautrix, sets it as her
// profile picture, and another user downloads it (authenticated media)
// and a thumbnail of it. On the fleets the media goes to the media worker.
func TestMediaAvatar(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		img := image.NewRGBA(image.Rect(0, 0, 120, 90))
		for y := range 90 {
			for x := range 120 {
				img.Set(x, y, color.RGBA{uint8(x * 2), uint8(y * 2), 200, 255})
			}
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		avatar := buf.Bytes()
		up, err := alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: avatar, ContentType: "image/png", FileName: "me.png"})
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		if up.ContentURI.Homeserver != serverName {
			t.Fatalf("content uri %s", up.ContentURI)
		}
		if err := alice.SetAvatarURL(ctx, up.ContentURI); err != nil {
			t.Fatalf("set avatar: %v", err)
		}
		got, err := bob.GetAvatarURL(ctx, alice.UserID)
		if err != nil || got != up.ContentURI {
			t.Fatalf("bob sees avatar %s (%v), want %s", got, err, up.ContentURI)
		}
		data, err := bob.DownloadBytes(ctx, got)
		if err != nil || !bytes.Equal(data, avatar) {
			t.Fatalf("bob's download: %d bytes (%v), want %d", len(data), err, len(avatar))
		}
		resp, err := bob.DownloadThumbnail(ctx, got, 32, 32, mautrix.DownloadThumbnailExtra{Method: "crop"})
		if err != nil {
			t.Fatalf("thumbnail: %v", err)
		}
		defer resp.Body.Close()
		cfg, format, err := image.DecodeConfig(resp.Body)
		if err != nil || format != "png" || cfg.Width != 32 || cfg.Height != 32 {
			t.Fatalf("thumbnail: %s %dx%d (%v)", format, cfg.Width, cfg.Height, err)
		}
		// The legacy unauthenticated endpoint does not serve media uploaded
		// under enable_authenticated_media (on by default).
		r := srv.do(t, ctx, "GET", "/_matrix/media/v3/download/"+serverName+"/"+got.FileID, "", nil)
		wantRawError(t, r, http.StatusNotFound, "M_NOT_FOUND")

		if f := srv.fleet; f != nil && f.front == nil {
			// The workers' duties: a generic worker does not serve media
			// (enable_media_repo: false), the media worker serves only media.
			r := rawGet(t, f.clientURL(instWorker1)+"/_matrix/client/v1/media/config", alice.AccessToken)
			wantRawError(t, r, http.StatusNotFound, "M_UNRECOGNIZED")
			r = rawGet(t, f.clientURL(instMain)+"/_matrix/client/v1/media/config", alice.AccessToken)
			wantRawError(t, r, http.StatusNotFound, "M_UNRECOGNIZED")
			r = rawGet(t, f.clientURL(instMedia)+"/_matrix/client/v3/account/whoami", alice.AccessToken)
			wantRawError(t, r, http.StatusNotFound, "M_UNRECOGNIZED")
			if r := rawGet(t, f.clientURL(instMedia)+"/_matrix/client/v1/media/config", alice.AccessToken); r.status != 200 {
				t.Fatalf("media worker config: %d %s", r.status, r.body)
			}
		}
	})
}

func rawGet(t testing.TB, url, token string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

// patternReader yields n bytes without holding them.
type patternReader struct{ left int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.left)
	for i := range b[:n] {
		b[i] = byte(i*13 + int(p.left))
	}
	p.left -= n
	return int(n), nil
}

// TestMediaLargeUploadThroughRouter: a 50 MiB file (max_upload_size)
// goes through the router to the media worker and comes back intact; one
// byte more is refused with M_TOO_LARGE.
func TestMediaLargeUploadThroughRouter(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		const size = 50 << 20
		want := sha256.New()
		if _, err := io.Copy(want, &patternReader{left: size}); err != nil {
			t.Fatal(err)
		}
		up, err := alice.Upload(ctx, &patternReader{left: size}, "application/octet-stream", size)
		if err != nil {
			t.Fatalf("upload of 50 MiB: %v", err)
		}
		resp, err := alice.Download(ctx, up.ContentURI)
		if err != nil {
			t.Fatalf("download: %v", err)
		}
		got := sha256.New()
		n, err := io.Copy(got, resp.Body)
		resp.Body.Close()
		if err != nil || n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatalf("downloaded %d bytes (%v), content equal: %v", n, err, bytes.Equal(got.Sum(nil), want.Sum(nil)))
		}
		_, err = alice.Upload(ctx, &patternReader{left: size + 1}, "application/octet-stream", size+1)
		wantMatrixError(t, err, http.StatusRequestEntityTooLarge, "M_TOO_LARGE")

		f := srv.fleet
		counts, err := f.front.requestsPerBackend(f, func(labels string) bool { return strings.Contains(labels, `class="media"`) })
		if err != nil {
			t.Fatal(err)
		}
		delete(counts, "none") // answered by the router itself (the refused upload)
		if counts[instMedia] == 0 || len(counts) != 1 {
			t.Fatalf("media requests per backend = %v, want all on %s", counts, instMedia)
		}
	})
}

// TestMediaAsyncUpload: MSC2246 through mautrix. An id from /create is
// only the creator's to fill, once; a download waiting on it gets the
// content when it arrives.
func TestMediaAsyncUpload(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		created, err := bob.CreateMXC(ctx)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if created.UnusedExpiresAt.IsZero() || created.ContentURI.Homeserver != serverName {
			t.Fatalf("create: %+v", created)
		}
		_, err = alice.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("not mine"), ContentType: "text/plain", MXC: created.ContentURI})
		wantMatrixError(t, err, http.StatusForbidden, "M_FORBIDDEN")

		type result struct {
			data []byte
			err  error
		}
		waited := make(chan result, 1)
		go func() {
			data, err := alice.DownloadBytes(ctx, created.ContentURI)
			waited <- result{data, err}
		}()
		content := []byte("uploaded later")
		if _, err := bob.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: content, ContentType: "text/plain", MXC: created.ContentURI}); err != nil {
			t.Fatalf("async upload: %v", err)
		}
		if r := <-waited; r.err != nil || !bytes.Equal(r.data, content) {
			t.Fatalf("waiting download: %q (%v)", r.data, r.err)
		}
		_, err = bob.UploadMedia(ctx, mautrix.ReqUploadMedia{ContentBytes: []byte("again"), ContentType: "text/plain", MXC: created.ContentURI})
		wantMatrixError(t, err, http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA")
	})
}

// TestMediaAbortedUploadThroughRouter: a client that goes away halfway
// through an upload to the router leaves nothing in the media store, and
// its retry succeeds.
func TestMediaAbortedUploadThroughRouter(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		store := filepath.Join(srv.fleet.dir, "media_store")
		const size = 8 << 20
		conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", alice.AccessToken, size)
		if _, err := io.Copy(conn, &patternReader{left: size / 2}); err != nil {
			t.Fatal(err)
		}
		// The media worker is receiving it: its staged file exists.
		testutil.Eventually(t, 20*time.Second, "the upload to reach the media worker", func() bool {
			return countStoreFiles(t, store) > 0
		})
		conn.Close()
		testutil.Eventually(t, 20*time.Second, "the aborted upload to be cleaned up", func() bool {
			return countStoreFiles(t, store) == 0
		})
		data := bytes.Repeat([]byte("retry!"), 1<<18)
		up, err := alice.UploadBytes(ctx, data, "application/octet-stream")
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		got, err := alice.DownloadBytes(ctx, up.ContentURI)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("retry download: %d bytes (%v)", len(got), err)
		}
		if n := countStoreFiles(t, store); n != 1 {
			t.Fatalf("%d files in the store after the retry, want its content only", n)
		}
	})
}

// countStoreFiles counts the files in a media store (staged and stored).
func countStoreFiles(t testing.TB, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk media store: %v", err)
	}
	return n
}
