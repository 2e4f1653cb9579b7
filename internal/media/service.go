package media

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"regexp"
	"time"

	"ganglion/internal/storage"
)

// Settings are the media config values.
type Settings struct {
	ServerName string
	// MaxUploadSize is max_upload_size in bytes.
	MaxUploadSize     int64
	ThumbnailSizes    []ThumbnailSize
	DynamicThumbnails bool
	MaxImagePixels    int64
	// AuthenticatedMedia is enable_authenticated_media: uploads made while
	// it is on are not served by the legacy unauthenticated endpoints.
	AuthenticatedMedia bool
	// MaxPendingUploads is max_pending_media_uploads.
	MaxPendingUploads int
	// UnusedExpiration is how long an id from /create waits for its
	// content (Synapse's unused_expiration_time, 24h).
	UnusedExpiration time.Duration
	Preview          PreviewSettings
}

// Service is the media repository of one process.
type Service struct {
	cfg   Settings
	meta  *metaStore
	store Store
	// remote is nil until SetFederation: remote media is then 404.
	remote *remoteCache
	// preview is nil unless url_preview_enabled.
	preview *previewer
	log     *slog.Logger
	now     func() time.Time
}

// NewService returns the repository over db and store.
func NewService(db *storage.DB, store Store, cfg Settings, log *slog.Logger) *Service {
	if cfg.UnusedExpiration <= 0 {
		cfg.UnusedExpiration = 24 * time.Hour
	}
	if cfg.MaxPendingUploads <= 0 {
		cfg.MaxPendingUploads = 5
	}
	s := &Service{cfg: cfg, meta: &metaStore{db: db}, store: store, log: log.With("module", "media"), now: time.Now}
	if cfg.Preview.Enabled {
		if s.cfg.Preview.MaxSize <= 0 {
			s.cfg.Preview.MaxSize = 10 << 20
		}
		s.preview = newPreviewer(s.cfg.Preview)
	}
	return s
}

// SetClock replaces the clock (tests of expiry).
func (s *Service) SetClock(now func() time.Time) { s.now = now }

func (s *Service) nowMS() int64 { return s.now().UnixMilli() }

// mediaIDPattern is what a media id may contain: ours are 24 letters, and
// anything outside this set (slashes, dots, percent signs) can only be an
// attempt to escape a path or a cache key.
var mediaIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)

// ValidMediaID reports whether id is a well-formed media id.
func ValidMediaID(id string) bool { return mediaIDPattern.MatchString(id) }

const idLetters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func newMediaID() (string, error) {
	b := make([]byte, 24)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(idLetters))))
		if err != nil {
			return "", fmt.Errorf("generate media id: %w", err)
		}
		b[i] = idLetters[n.Int64()]
	}
	return string(b), nil
}

// Upload is what a client sends with its content.
type Upload struct {
	UserID      string
	ContentType string
	UploadName  string
	Body        io.Reader
}

// stage streams the body into the store and publishes it.
func (s *Service) stage(ctx context.Context, body io.Reader) (Staged, error) {
	st, err := s.store.Stage(ctx, body, s.cfg.MaxUploadSize)
	if err != nil {
		return nil, err
	}
	if err := st.Publish(); err != nil {
		st.Discard()
		return nil, err
	}
	return st, nil
}

// finish runs after a media row committed: see Store for why Publish runs
// twice. The staged copy goes away in any case.
func (s *Service) finish(st Staged) error {
	defer func() {
		if err := st.Discard(); err != nil {
			s.log.Warn("could not drop staged upload", "err", err)
		}
	}()
	return st.Publish()
}

// Create stores new content under a fresh id and returns the id.
func (s *Service) Create(ctx context.Context, up Upload) (string, error) {
	st, err := s.stage(ctx, up.Body)
	if err != nil {
		return "", err
	}
	id, err := newMediaID()
	if err != nil {
		st.Discard()
		return "", err
	}
	m := &Media{ServerName: s.cfg.ServerName, MediaID: id, UserID: up.UserID, CreatedTS: s.nowMS(),
		ContentType: up.ContentType, UploadName: up.UploadName, Uploaded: true, Length: st.Size(),
		SHA256: st.SHA256(), Authenticated: s.cfg.AuthenticatedMedia}
	if err := s.meta.insert(ctx, m); err != nil {
		st.Discard()
		return "", err
	}
	if err := s.finish(st); err != nil {
		return "", err
	}
	s.pregenerate(ctx, m)
	return id, nil
}

// Reserve hands out an id for a later upload (MSC2246 /create) and returns
// it with the time (ms) by which the content must arrive.
func (s *Service) Reserve(ctx context.Context, userID string) (string, int64, error) {
	id, err := newMediaID()
	if err != nil {
		return "", 0, err
	}
	now := s.now()
	m := &Media{ServerName: s.cfg.ServerName, MediaID: id, UserID: userID, CreatedTS: now.UnixMilli(),
		UnusedExpiresAt: now.Add(s.cfg.UnusedExpiration).UnixMilli(), Authenticated: s.cfg.AuthenticatedMedia}
	if err := s.meta.reserve(ctx, m, s.cfg.MaxPendingUploads, now.UnixMilli()); err != nil {
		return "", 0, err
	}
	return id, m.UnusedExpiresAt, nil
}

// Errors of UploadTo, mapped to the spec's answers by the handlers.
var (
	ErrNotFound      = errors.New("no such media")
	ErrNotOwner      = errors.New("media id belongs to another user")
	ErrAlreadyStored = errors.New("media already uploaded")
	ErrExpired       = errors.New("media id expired")
)

// checkReservation tells whether userID may upload to the id now.
func (s *Service) checkReservation(ctx context.Context, id, userID string) error {
	m, err := s.meta.get(ctx, s.cfg.ServerName, id)
	if err != nil {
		return err
	}
	switch {
	case m == nil:
		return ErrNotFound
	case m.UserID != userID:
		return ErrNotOwner
	case m.Uploaded:
		return ErrAlreadyStored
	case m.UnusedExpiresAt <= s.nowMS():
		return ErrExpired
	}
	return nil
}

// UploadTo stores the content of an id reserved by Reserve.
func (s *Service) UploadTo(ctx context.Context, id string, up Upload) error {
	// Checked before reading the body so a refused upload costs nothing,
	// and again (atomically) when the content is recorded.
	if err := s.checkReservation(ctx, id, up.UserID); err != nil {
		return err
	}
	st, err := s.stage(ctx, up.Body)
	if err != nil {
		return err
	}
	m := &Media{ServerName: s.cfg.ServerName, MediaID: id, UserID: up.UserID, ContentType: up.ContentType,
		UploadName: up.UploadName, Uploaded: true, Length: st.Size(), SHA256: st.SHA256()}
	ok, err := s.meta.complete(ctx, m, s.nowMS())
	if err != nil {
		st.Discard()
		return err
	}
	if !ok {
		st.Discard()
		if err := s.checkReservation(ctx, id, up.UserID); err != nil {
			return err
		}
		return ErrAlreadyStored
	}
	if err := s.finish(st); err != nil {
		return err
	}
	if full, err := s.meta.get(ctx, s.cfg.ServerName, id); err == nil && full != nil {
		s.pregenerate(ctx, full)
	}
	return nil
}

// Errors of Get.
var (
	ErrRemote        = errors.New("remote media is not available")
	ErrNotYetUpload  = errors.New("media not yet uploaded")
	ErrQuarantined   = errors.New("media is quarantined")
	errWaitCancelled = errors.New("wait cancelled")
)

// pollInterval is how often a download waiting for an asynchronous upload
// looks again; the upload may land on another process, so the database is
// the only place to learn of it.
const pollInterval = 250 * time.Millisecond

// Get returns the metadata of uploaded media, waiting up to wait for the
// content of a reserved id. Media of other servers comes from the cache,
// fetched over federation first if need be.
func (s *Service) Get(ctx context.Context, server, id string, wait time.Duration) (*Media, error) {
	return s.get(ctx, server, id, wait, true)
}

// get is Get; allowFetch false serves remote media only from the cache.
func (s *Service) get(ctx context.Context, server, id string, wait time.Duration, allowFetch bool) (*Media, error) {
	if server != s.cfg.ServerName {
		return s.getRemote(ctx, server, id, allowFetch)
	}
	if !ValidMediaID(id) {
		return nil, ErrNotFound
	}
	deadline := s.now().Add(wait)
	for {
		m, err := s.meta.get(ctx, server, id)
		if err != nil {
			return nil, err
		}
		switch {
		case m == nil:
			return nil, ErrNotFound
		case m.QuarantinedBy != "":
			return nil, ErrQuarantined
		case m.Uploaded:
			return m, nil
		case m.UnusedExpiresAt <= s.nowMS():
			return nil, ErrNotFound
		}
		left := deadline.Sub(s.now())
		if left <= 0 {
			return nil, ErrNotYetUpload
		}
		t := time.NewTimer(min(left, pollInterval))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(errWaitCancelled, ctx.Err())
		case <-t.C:
		}
	}
}

// Open opens the content of uploaded media.
func (s *Service) Open(ctx context.Context, m *Media) (Content, error) {
	return s.store.Open(ctx, m.SHA256)
}

// pregenerate makes the configured thumbnails of a new image, decoding it
// once. Failures are logged, not returned: the upload itself succeeded,
// and a thumbnail request makes a missing thumbnail again.
func (s *Service) pregenerate(ctx context.Context, m *Media) {
	if !thumbnailable[m.ContentType] {
		return
	}
	src, err := s.store.Open(ctx, m.SHA256)
	if err != nil {
		s.log.Warn("could not open media for thumbnailing", "media_id", m.MediaID, "err", err)
		return
	}
	img, err := decodeSource(src, m.ContentType, s.cfg.MaxImagePixels)
	src.Close()
	if err != nil {
		if !errors.Is(err, errNotThumbnailable) {
			s.log.Warn("could not decode media for thumbnailing", "media_id", m.MediaID, "err", err)
		}
		return
	}
	for _, size := range s.cfg.ThumbnailSizes {
		data, contentType, err := encodeStill(resize(img, size.Width, size.Height, size.Method), m.ContentType)
		if err == nil {
			_, err = s.storeThumbnail(ctx, m, size, false, data, contentType)
		}
		if err != nil {
			s.log.Warn("could not make thumbnail", "media_id", m.MediaID, "err", err)
			return
		}
	}
}

// ThumbnailRequest is a client's thumbnail query.
type ThumbnailRequest struct {
	Width, Height int
	Method        string
	Animated      bool
}

// Thumbnail returns the thumbnail to serve for a request: made to measure
// when dynamic_thumbnails is on, else the best configured size. An
// animated request of an animated source gets an animated GIF; otherwise a
// still.
func (s *Service) Thumbnail(ctx context.Context, m *Media, req ThumbnailRequest) (*Thumbnail, error) {
	if !thumbnailable[m.ContentType] {
		return nil, errNotThumbnailable
	}
	size := ThumbnailSize{Width: req.Width, Height: req.Height, Method: req.Method}
	if !s.cfg.DynamicThumbnails {
		var ok bool
		if size, ok = pickSize(s.cfg.ThumbnailSizes, req.Width, req.Height, req.Method); !ok {
			return nil, errNotThumbnailable
		}
	}
	if req.Animated && (m.ContentType == "image/gif" || m.ContentType == "image/webp") {
		t, err := s.thumbnail(ctx, m, size, true)
		if t != nil || (err != nil && !errors.Is(err, errNotThumbnailable)) {
			return t, err
		}
		// A still source, or an animation over the pixel budget: a still
		// thumbnail (of the first frame) is the next best answer.
	}
	return s.thumbnail(ctx, m, size, false)
}

// thumbnail returns the stored thumbnail of the size, making it if needed.
// For animated, nil means the source is not animated.
func (s *Service) thumbnail(ctx context.Context, m *Media, size ThumbnailSize, animated bool) (*Thumbnail, error) {
	existing, err := s.meta.thumbnails(ctx, m.ServerName, m.MediaID)
	if err != nil {
		return nil, err
	}
	for _, t := range existing {
		if t.Width == size.Width && t.Height == size.Height && t.Method == size.Method && t.Animated == animated {
			return &t, nil
		}
	}
	src, err := s.store.Open(ctx, m.SHA256)
	if err != nil {
		return nil, fmt.Errorf("open media %s for thumbnailing: %w", m.MediaID, err)
	}
	defer src.Close()
	var data []byte
	contentType := "image/gif"
	if animated {
		if data, err = makeAnimated(src, m.ContentType, s.cfg.MaxImagePixels, size); err != nil || data == nil {
			return nil, err
		}
	} else if data, contentType, err = makeStill(src, m.ContentType, s.cfg.MaxImagePixels, size); err != nil {
		return nil, err
	}
	return s.storeThumbnail(ctx, m, size, animated, data, contentType)
}

// storeThumbnail stores a thumbnail's content and records it, with the
// same publish-commit-publish steps as an upload.
func (s *Service) storeThumbnail(ctx context.Context, m *Media, size ThumbnailSize, animated bool, data []byte, contentType string) (*Thumbnail, error) {
	st, err := s.store.Stage(ctx, bytes.NewReader(data), -1)
	if err != nil {
		return nil, err
	}
	if err := st.Publish(); err != nil {
		st.Discard()
		return nil, err
	}
	t := Thumbnail{Width: size.Width, Height: size.Height, Method: size.Method, ContentType: contentType,
		Animated: animated, Length: st.Size(), SHA256: st.SHA256()}
	if err := s.meta.addThumbnail(ctx, m.ServerName, m.MediaID, t); err != nil {
		st.Discard()
		return nil, err
	}
	if err := s.finish(st); err != nil {
		return nil, err
	}
	return &t, nil
}

// OpenThumbnail opens a thumbnail's content.
func (s *Service) OpenThumbnail(ctx context.Context, t *Thumbnail) (Content, error) {
	return s.store.Open(ctx, t.SHA256)
}

// Delete removes one media item: its rows, then its content and its
// thumbnails' content unless other rows still name them.
func (s *Service) Delete(ctx context.Context, server, id string) (bool, error) {
	hashes, found, err := s.meta.deleteMedia(ctx, server, id)
	if err != nil || !found {
		return found, err
	}
	for _, h := range hashes {
		err := s.store.Remove(ctx, h, func(ctx context.Context) (bool, error) { return s.meta.referenced(ctx, h) })
		if err != nil {
			// The rows are gone; leftover content is only wasted space.
			s.log.Warn("could not remove media content", "media_id", id, "sha256", h, "err", err)
		}
	}
	return true, nil
}

// ExpireUnused deletes reserved ids whose content never came in time.
func (s *Service) ExpireUnused(ctx context.Context) error {
	n, err := s.meta.expireUnused(ctx, s.nowMS())
	if err != nil {
		return err
	}
	if n > 0 {
		s.log.Info("expired unused media ids", "count", n)
	}
	return nil
}
