package media

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"

	"ganglion/internal/mxhttp"
)

// FederationAuth is the X-Matrix check of inbound federation requests
// (*xmatrix.Authenticator).
type FederationAuth interface {
	Auth(h mxhttp.HandlerFunc) mxhttp.HandlerFunc
}

const federationPrefix = "/_matrix/federation/v1/media"

// FederationRoutes registers the authenticated federation media endpoints,
// through which other servers download our users' media.
func (s *Service) FederationRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, auth FederationAuth) {
	h := &handlers{s: s}
	mux.Handle("GET "+federationPrefix+"/download/{mediaId}", srv.Handle(auth.Auth(h.federationDownload)))
	mux.Handle("GET "+federationPrefix+"/thumbnail/{mediaId}", srv.Handle(auth.Auth(h.federationThumbnail)))
}

// localMedia resolves the media of a federation request: only our own
// (a server asking us for a third server's media is refused, as the spec
// has servers serve only their media), with the same answers as a client
// download otherwise (quarantined media is 404, as in Synapse).
func (h *handlers) localMedia(r *http.Request) (*Media, error) {
	wait, err := parseWait(r)
	if err != nil {
		return nil, err
	}
	m, err := h.s.get(r.Context(), h.s.cfg.ServerName, r.PathValue("mediaId"), wait, false)
	if err != nil {
		return nil, getErr(err)
	}
	return m, nil
}

func (h *handlers) federationDownload(w http.ResponseWriter, r *http.Request) error {
	m, err := h.localMedia(r)
	if err != nil {
		return err
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
	return writeMultipart(w, c, m.ContentType, m.UploadName)
}

func (h *handlers) federationThumbnail(w http.ResponseWriter, r *http.Request) error {
	req, err := parseThumbnailRequest(r)
	if err != nil {
		return err
	}
	m, err := h.localMedia(r)
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
	return writeMultipart(w, c, t.ContentType, "thumbnail"+extension(t.ContentType))
}

// writeMultipart answers with the spec's multipart/mixed body: the
// metadata object (empty: the spec defines no fields yet), then the
// content with its type and disposition.
func writeMultipart(w http.ResponseWriter, c Content, contentType, name string) error {
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	mw := multipart.NewWriter(w)
	w.Header().Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	meta, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return err
	}
	if _, err := io.WriteString(meta, "{}"); err != nil {
		return err
	}
	disposition := "attachment"
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && inlineTypes[mt] {
		disposition = "inline"
	}
	part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {contentType},
		"Content-Disposition": {contentDisposition(disposition, name)}})
	if err != nil {
		return err
	}
	// After the status line an error can only be logged; the truncated
	// body (no closing boundary) tells the remote the download failed.
	if _, err := io.Copy(part, c); err != nil {
		return err
	}
	return mw.Close()
}
