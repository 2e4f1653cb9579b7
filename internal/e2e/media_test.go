package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
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
