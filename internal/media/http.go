package media

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
)

// legacyPrefixes serve the unauthenticated media API (v1 and r0 still used
// by old clients, as Synapse serves them).
var legacyPrefixes = []string{"/_matrix/media/v3", "/_matrix/media/r0", "/_matrix/media/v1"}

const authedPrefix = "/_matrix/client/v1/media"

// Routes registers the media endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	h := &handlers{s: s, acc: acc}
	for _, p := range legacyPrefixes {
		mux.Handle("POST "+p+"/upload", srv.Handle(acc.Auth(h.upload)))
		mux.Handle("PUT "+p+"/upload/{serverName}/{mediaId}", srv.Handle(acc.Auth(h.uploadTo)))
		mux.Handle("GET "+p+"/config", srv.Handle(acc.Auth(h.config)))
		mux.Handle("GET "+p+"/download/{serverName}/{mediaId}", srv.Handle(h.legacyDownload))
		mux.Handle("GET "+p+"/download/{serverName}/{mediaId}/{fileName}", srv.Handle(h.legacyDownload))
		mux.Handle("GET "+p+"/thumbnail/{serverName}/{mediaId}", srv.Handle(h.legacyThumbnail))
		mux.Handle("GET "+p+"/preview_url", srv.Handle(acc.Auth(h.previewURL)))
	}
	mux.Handle("POST /_matrix/media/v1/create", srv.Handle(acc.Auth(h.create)))
	mux.Handle("GET "+authedPrefix+"/config", srv.Handle(acc.Auth(h.config)))
	mux.Handle("GET "+authedPrefix+"/download/{serverName}/{mediaId}", srv.Handle(acc.Auth(h.authedDownload)))
	mux.Handle("GET "+authedPrefix+"/download/{serverName}/{mediaId}/{fileName}", srv.Handle(acc.Auth(h.authedDownload)))
	mux.Handle("GET "+authedPrefix+"/thumbnail/{serverName}/{mediaId}", srv.Handle(acc.Auth(h.authedThumbnail)))
	mux.Handle("GET "+authedPrefix+"/preview_url", srv.Handle(acc.Auth(h.previewURL)))
	h.adminRoutes(mux, srv)
}

type handlers struct {
	s   *Service
	acc *accounts.Service
}

func (h *handlers) config(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"m.upload.size": h.s.cfg.MaxUploadSize})
}

func (h *handlers) previewURL(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if h.s.preview == nil {
		// Synapse does not mount the endpoint unless url_preview_enabled.
		return mxhttp.Unrecognized(http.StatusNotFound, "URL previews are disabled on this server")
	}
	raw := r.URL.Query().Get("url")
	if raw == "" {
		return mxhttp.MissingParam("Missing url")
	}
	var ts int64
	if v := r.URL.Query().Get("ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return mxhttp.InvalidParam("ts must be a non-negative integer")
		}
		ts = n
	}
	og, err := h.s.Preview(r.Context(), req.UserID, raw, ts)
	switch {
	case errors.Is(err, errBlockedURL):
		return mxhttp.Forbidden("URL blocked")
	case errors.Is(err, errBlockedIP):
		// As Synapse, which answers as if the name did not resolve.
		return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN",
			Message: "DNS resolution failure during URL preview generation", Cause: err}
	case err != nil:
		return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "Failed to download content", Cause: err}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, og)
}

// uploadMeta reads the content type and file name of an upload.
func uploadMeta(r *http.Request) (contentType, name string, err error) {
	contentType = r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	} else if _, _, perr := mime.ParseMediaType(contentType); perr != nil {
		return "", "", mxhttp.InvalidParam("Invalid Content-Type %q", contentType)
	}
	if raw := r.URL.Query().Get("filename"); raw != "" {
		if name, err = cleanFileName(raw); err != nil {
			return "", "", err
		}
	}
	return contentType, name, nil
}

// cleanFileName keeps the last path element of a client-supplied name: a
// name is only ever a suggestion for a download's Content-Disposition, so
// directories in it mean nothing, and control characters are refused.
func cleanFileName(raw string) (string, error) {
	for _, c := range raw {
		if unicode.IsControl(c) {
			return "", mxhttp.InvalidParam("File name contains control characters")
		}
	}
	name := path.Base(strings.ReplaceAll(raw, `\`, "/"))
	if name == "." || name == ".." || name == "/" {
		return "", mxhttp.InvalidParam("Invalid file name %q", raw)
	}
	if len(name) > 255 {
		return "", mxhttp.InvalidParam("File name too long")
	}
	return name, nil
}

func (h *handlers) checkLength(r *http.Request) error {
	if r.ContentLength > h.s.cfg.MaxUploadSize {
		return mxhttp.TooLarge("Upload request body is too large (limit %d bytes)", h.s.cfg.MaxUploadSize)
	}
	return nil
}

// storeErr maps store errors of an upload to the spec's answers.
func (h *handlers) storeErr(err error) error {
	if errors.Is(err, ErrTooLarge) {
		return mxhttp.TooLarge("Upload request body is too large (limit %d bytes)", h.s.cfg.MaxUploadSize)
	}
	return err
}

func (h *handlers) upload(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	if err := h.checkLength(r); err != nil {
		return err
	}
	ct, name, err := uploadMeta(r)
	if err != nil {
		return err
	}
	id, err := h.s.Create(r.Context(), Upload{UserID: req.UserID, ContentType: ct, UploadName: name, Body: r.Body})
	if err != nil {
		return h.storeErr(err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"content_uri": "mxc://" + h.s.cfg.ServerName + "/" + id})
}

func (h *handlers) create(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	id, expires, err := h.s.Reserve(r.Context(), req.UserID)
	if errors.Is(err, errTooManyPending) {
		return mxhttp.LimitExceeded(int64(time.Minute / time.Millisecond))
	}
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{
		"content_uri":       "mxc://" + h.s.cfg.ServerName + "/" + id,
		"unused_expires_at": expires,
	})
}

func (h *handlers) uploadTo(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	server, id := r.PathValue("serverName"), r.PathValue("mediaId")
	if server != h.s.cfg.ServerName {
		return mxhttp.NotFound("Non-local server name specified")
	}
	if !ValidMediaID(id) {
		return mxhttp.NotFound("Unknown media id")
	}
	if err := h.checkLength(r); err != nil {
		return err
	}
	ct, name, err := uploadMeta(r)
	if err != nil {
		return err
	}
	err = h.s.UploadTo(r.Context(), id, Upload{UserID: req.UserID, ContentType: ct, UploadName: name, Body: r.Body})
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExpired):
		return mxhttp.NotFound("Unknown media id")
	case errors.Is(err, ErrNotOwner):
		return mxhttp.Forbidden("You may not upload to this media id")
	case errors.Is(err, ErrAlreadyStored):
		return mxhttp.WithCode(http.StatusConflict, "M_CANNOT_OVERWRITE_MEDIA", "Media ID already has content")
	case err != nil:
		return h.storeErr(err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{})
}

// maxWait caps timeout_ms, as a download holds a connection meanwhile.
const (
	defaultWait = 20 * time.Second
	maxWait     = 60 * time.Second
)

func parseWait(r *http.Request) (time.Duration, error) {
	raw := r.URL.Query().Get("timeout_ms")
	if raw == "" {
		return defaultWait, nil
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || ms < 0 {
		return 0, mxhttp.InvalidParam("timeout_ms must be a non-negative integer")
	}
	return min(time.Duration(ms)*time.Millisecond, maxWait), nil
}

// lookup resolves the media of a download or thumbnail request; legacy
// requests refuse media uploaded under enable_authenticated_media.
func (h *handlers) lookup(r *http.Request, legacy bool) (*Media, error) {
	wait, err := parseWait(r)
	if err != nil {
		return nil, err
	}
	// The legacy endpoints fetch remote media only when asked to (their
	// allow_remote) and when what they fetch could be served by them:
	// under enable_authenticated_media it could not.
	allowFetch := !legacy || (!h.s.cfg.AuthenticatedMedia && r.URL.Query().Get("allow_remote") != "false")
	m, err := h.s.get(r.Context(), r.PathValue("serverName"), r.PathValue("mediaId"), wait, allowFetch)
	if err != nil {
		return nil, getErr(err)
	}
	if legacy && m.Authenticated {
		return nil, mxhttp.NotFound("Not found")
	}
	return m, nil
}

// getErr maps the errors of Service.Get to the spec's answers (Synapse's
// for a failed remote fetch).
func getErr(err error) error {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrRemote), errors.Is(err, ErrQuarantined):
		return mxhttp.NotFound("Not found")
	case errors.Is(err, ErrNotYetUpload):
		return mxhttp.WithCode(http.StatusGatewayTimeout, "M_NOT_YET_UPLOADED", "Media has not been uploaded yet")
	case errors.Is(err, ErrRemoteDenied):
		return mxhttp.Forbidden("Federation denied with the media's server")
	case errors.Is(err, ErrRemoteTooLarge):
		return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_TOO_LARGE",
			Message: "Remote media is larger than this server's max_upload_size", Cause: err}
	case errors.Is(err, ErrRemoteFailed):
		return &mxhttp.Error{Status: http.StatusBadGateway, Code: "M_UNKNOWN", Message: "Failed to fetch remote media", Cause: err}
	}
	return err
}

func (h *handlers) legacyDownload(w http.ResponseWriter, r *http.Request) error {
	return h.download(w, r, true)
}

func (h *handlers) authedDownload(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	return h.download(w, r, false)
}

func (h *handlers) download(w http.ResponseWriter, r *http.Request, legacy bool) error {
	m, err := h.lookup(r, legacy)
	if err != nil {
		return err
	}
	name := m.UploadName
	if fn := r.PathValue("fileName"); fn != "" {
		if name, err = cleanFileName(fn); err != nil {
			return err
		}
	}
	c, err := h.s.Open(r.Context(), m)
	if errors.Is(err, ErrNoContent) {
		h.s.log.Error("media row without content", "media_id", m.MediaID, "sha256", m.SHA256)
		return mxhttp.NotFound("Not found")
	}
	if err != nil {
		return err
	}
	defer c.Close()
	serve(w, r, c, m.ContentType, name)
	return nil
}

func (h *handlers) legacyThumbnail(w http.ResponseWriter, r *http.Request) error {
	return h.thumbnail(w, r, true)
}

func (h *handlers) authedThumbnail(w http.ResponseWriter, r *http.Request, _ *accounts.Requester) error {
	return h.thumbnail(w, r, false)
}

// maxThumbnailSide bounds a requested thumbnail side: a thumbnail is small
// by definition, and made-to-measure ones cost decoding time.
const maxThumbnailSide = 4096

func parseThumbnailRequest(r *http.Request) (ThumbnailRequest, error) {
	q := r.URL.Query()
	var req ThumbnailRequest
	for _, p := range []struct {
		name string
		dst  *int
	}{{"width", &req.Width}, {"height", &req.Height}} {
		raw := q.Get(p.name)
		if raw == "" {
			return req, mxhttp.MissingParam("Missing %s", p.name)
		}
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > maxThumbnailSide {
			return req, mxhttp.InvalidParam("%s must be an integer between 1 and %d", p.name, maxThumbnailSide)
		}
		*p.dst = n
	}
	req.Method = q.Get("method")
	switch req.Method {
	case "":
		req.Method = "scale"
	case "scale", "crop":
	default:
		return req, mxhttp.InvalidParam("method must be crop or scale")
	}
	switch q.Get("animated") {
	case "", "false":
	case "true":
		req.Animated = true
	default:
		return req, mxhttp.InvalidParam("animated must be true or false")
	}
	return req, nil
}

func (h *handlers) thumbnail(w http.ResponseWriter, r *http.Request, legacy bool) error {
	req, err := parseThumbnailRequest(r)
	if err != nil {
		return err
	}
	m, err := h.lookup(r, legacy)
	if err != nil {
		return err
	}
	t, err := h.s.Thumbnail(r.Context(), m, req)
	if errors.Is(err, errNotThumbnailable) {
		return mxhttp.NotFound("No thumbnail available for this media")
	}
	if err != nil {
		return err
	}
	c, err := h.s.OpenThumbnail(r.Context(), t)
	if err != nil {
		return err
	}
	defer c.Close()
	serve(w, r, c, t.ContentType, "thumbnail"+extension(t.ContentType))
	return nil
}

func extension(contentType string) string {
	switch contentType {
	case "image/png":
		return ".png"
	case "image/jpeg":
		return ".jpg"
	case "image/gif":
		return ".gif"
	}
	return ""
}

// inlineTypes may be shown by a browser in place; everything else is sent
// as an attachment so that an uploaded HTML or SVG file can never run in
// the server's origin. (Synapse's list.)
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true, "application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// serve writes content with the headers that keep it inert in a browser.
// http.ServeContent streams it and handles Range and HEAD.
func serve(w http.ResponseWriter, r *http.Request, c Content, contentType, name string) {
	hd := w.Header()
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || contentType == "" {
		mt, contentType = "application/octet-stream", "application/octet-stream"
	}
	if strings.HasPrefix(mt, "text/") && params["charset"] == "" {
		contentType = mt + "; charset=UTF-8"
	}
	hd.Set("Content-Type", contentType)
	disposition := "attachment"
	if inlineTypes[mt] {
		disposition = "inline"
	}
	hd.Set("Content-Disposition", contentDisposition(disposition, name))
	hd.Set("Content-Security-Policy", "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "+
		"style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
	hd.Set("Cross-Origin-Resource-Policy", "cross-origin")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cache-Control", "public, max-age=86400, s-maxage=86400")
	http.ServeContent(w, r, "", time.Time{}, c)
}

// contentDisposition builds the header per RFC 6266: a quoted filename for
// plain ASCII names, filename* with UTF-8 percent-encoding otherwise.
func contentDisposition(kind, name string) string {
	if name == "" {
		return kind
	}
	plain := true
	for _, c := range name {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '%' || c == ';' {
			plain = false
			break
		}
	}
	if plain {
		return fmt.Sprintf(`%s; filename="%s"`, kind, name)
	}
	return kind + "; filename*=utf-8''" + encodeExtValue(name)
}

// encodeExtValue percent-encodes every byte outside RFC 5987's attr-char.
func encodeExtValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
