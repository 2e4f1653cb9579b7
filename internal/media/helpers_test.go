package media_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/gen2brain/webp"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/media"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

const serverName = "media.test"

// env is one media repository served over real HTTP on loopback.
type env struct {
	t     testing.TB
	db    *storage.DB
	svc   *media.Service
	dir   string
	url   string
	done  atomic.Int64 // requests finished, for waiting on aborted ones
	alice string       // access tokens
	bob   string
	admin string
	// origin signs federation requests as originName; the repository's
	// federation endpoints know its key.
	origin events.SigningKey
}

func defaultSettings() media.Settings {
	return media.Settings{
		ServerName:    serverName,
		MaxUploadSize: 50 << 20,
		ThumbnailSizes: []media.ThumbnailSize{
			{Width: 32, Height: 32, Method: "crop"}, {Width: 96, Height: 96, Method: "crop"},
			{Width: 320, Height: 240, Method: "scale"}, {Width: 640, Height: 480, Method: "scale"},
			{Width: 800, Height: 600, Method: "scale"},
		},
		MaxImagePixels:     32 << 20,
		AuthenticatedMedia: true,
		MaxPendingUploads:  5,
	}
}

func newEnv(t testing.TB, db *storage.DB, tweak func(*media.Settings)) *env {
	t.Helper()
	return newEnvAt(t, db, t.TempDir(), nil, tweak)
}

// newEnvShared is a second repository over prev's database and store, as
// after a restart with other settings; prev's users and tokens stay valid.
func newEnvShared(t testing.TB, prev *env, tweak func(*media.Settings)) *env {
	t.Helper()
	return newEnvAt(t, prev.db, prev.dir, prev, tweak)
}

func newEnvAt(t testing.TB, db *storage.DB, dir string, prev *env, tweak func(*media.Settings)) *env {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := media.NewLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultSettings()
	if tweak != nil {
		tweak(&cfg)
	}
	e := &env{t: t, db: db, dir: dir, origin: mustSigningKey(t)}
	e.svc = media.NewService(db, store, cfg, log)
	acc := accounts.NewService(db, accounts.Settings{ServerName: serverName, EnableRegistration: true,
		RegistrationWithoutVerify: true, BcryptRounds: 4}, log)
	mux := mxhttp.NewMux()
	srv := mxhttp.NewServer(log)
	e.svc.Routes(mux, srv, acc)
	e.svc.FederationRoutes(mux, srv, &xmatrix.Authenticator{ServerName: serverName,
		Keys: staticKeys{originName: e.origin}, Log: log})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer e.done.Add(1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	e.url = hs.URL
	if prev != nil {
		e.alice, e.bob, e.admin = prev.alice, prev.bob, prev.admin
		return e
	}
	for _, u := range []struct {
		name  string
		admin bool
		tok   *string
	}{{"alice", false, &e.alice}, {"bob", false, &e.bob}, {"root", true, &e.admin}} {
		sess, err := acc.Register(t.Context(), accounts.NewUser{Localpart: u.name, Password: "pw", Admin: u.admin})
		if err != nil {
			t.Fatal(err)
		}
		*u.tok = sess.AccessToken
	}
	return e
}

// do sends a request and returns the response with its body read.
func (e *env) do(method, path, token string, body io.Reader, header map[string]string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, data
}

// upload posts content and returns the media id.
func (e *env) upload(token, contentType, filename string, data []byte) string {
	e.t.Helper()
	path := "/_matrix/media/v3/upload"
	if filename != "" {
		path += "?filename=" + filename
	}
	resp, body := e.do("POST", path, token, bytes.NewReader(data), map[string]string{"Content-Type": contentType})
	if resp.StatusCode != 200 {
		e.t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		e.t.Fatal(err)
	}
	prefix := "mxc://" + serverName + "/"
	if len(out.ContentURI) <= len(prefix) || out.ContentURI[:len(prefix)] != prefix {
		e.t.Fatalf("content_uri = %q", out.ContentURI)
	}
	return out.ContentURI[len(prefix):]
}

// wantError checks a Matrix error response.
func wantError(t testing.TB, what string, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != status || e.Errcode != code {
		t.Errorf("%s: got %d %s, want %d %s", what, resp.StatusCode, body, status, code)
	}
}

// countFiles counts regular files under dir.
func countFiles(t testing.TB, dir string) int {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func gradient(w, h int, shift uint8) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x*255/w) + shift, uint8(y*255/h) + shift, 128 + shift, 255})
		}
	}
	return img
}

func pngBytes(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, gradient(w, h, 0)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegBytes(t testing.TB, w, h int) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, gradient(w, h, 0), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func animatedGIF(t testing.TB, w, h, frames int) []byte {
	g := &gif.GIF{}
	for i := range frames {
		p := image.NewPaletted(image.Rect(0, 0, w, h), palette.Plan9)
		for y := range h {
			for x := range w {
				p.Set(x, y, color.RGBA{uint8(i * 80), uint8(x), uint8(y), 255})
			}
		}
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, 10)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func webpStill(t testing.TB, w, h int, shift uint8) []byte {
	var b bytes.Buffer
	if err := webp.Encode(&b, gradient(w, h, shift), webp.Options{Lossless: true}); err != nil {
		t.Fatalf("encode webp: %v", err)
	}
	return b.Bytes()
}

// webpChunk returns the image bitstream chunk (VP8L or VP8) of a simple
// WebP file, header included.
func webpChunk(t testing.TB, file []byte) []byte {
	for off := 12; off+8 <= len(file); {
		size := int(binary.LittleEndian.Uint32(file[off+4:]))
		fourcc := string(file[off : off+4])
		end := off + 8 + size + size%2
		if fourcc == "VP8L" || fourcc == "VP8 " {
			return file[off:min(end, len(file))]
		}
		off = end
	}
	t.Fatal("no image chunk in webp")
	return nil
}

func le24(v int) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16)} }

func riffChunk(fourcc string, payload []byte) []byte {
	out := append([]byte(fourcc), binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))...)
	out = append(out, payload...)
	if len(payload)%2 == 1 {
		out = append(out, 0)
	}
	return out
}

// animatedWebP builds an animated WebP (VP8X + ANIM + ANMF frames) around
// stills from the encoder, which cannot write animations itself.
func animatedWebP(t testing.TB, w, h, frames int) []byte {
	vp8x := append([]byte{0x02, 0, 0, 0}, append(le24(w-1), le24(h-1)...)...)
	body := append([]byte("WEBP"), riffChunk("VP8X", vp8x)...)
	body = append(body, riffChunk("ANIM", []byte{0, 0, 0, 0, 0, 0})...)
	for i := range frames {
		frame := webpChunk(t, webpStill(t, w, h, uint8(i*70)))
		payload := append(append(append(append(le24(0), le24(0)...), le24(w-1)...), le24(h-1)...), le24(100)...)
		payload = append(payload, 0)
		payload = append(payload, frame...)
		body = append(body, riffChunk("ANMF", payload)...)
	}
	return append(append([]byte("RIFF"), binary.LittleEndian.AppendUint32(nil, uint32(len(body)))...), body...)
}
