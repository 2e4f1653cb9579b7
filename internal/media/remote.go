package media

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"sync"
	"time"

	"ganglion/internal/federation/client"
	"ganglion/internal/federation/servername"
)

// Federation is what the repository needs of the outbound federation
// client (*client.Client) to fetch other servers' media.
type Federation interface {
	Stream(ctx context.Context, req client.Request) (*http.Response, error)
	FetchURL(ctx context.Context, rawURL string) (*http.Response, error)
}

var _ Federation = (*client.Client)(nil)

// RemoteSettings configure the cache of other servers' media.
type RemoteSettings struct {
	// PreventDownloadsFrom is prevent_media_downloads_from: media of these
	// servers is never fetched, and not served even if cached.
	PreventDownloadsFrom map[string]bool
	// Lifetime is media_retention.remote_media_lifetime: cached remote
	// media not served for this long is purged. 0 keeps it forever.
	Lifetime time.Duration
}

// Errors of fetching remote media, mapped to answers by the handlers.
var (
	ErrRemoteDenied   = errors.New("federation with the media's server is not allowed")
	ErrRemoteTooLarge = errors.New("remote media exceeds max_upload_size")
	ErrRemoteFailed   = errors.New("could not fetch remote media")
)

// remoteTimeoutMS is the timeout_ms asked of the remote server for media
// whose upload it has not finished (MSC2246).
const remoteTimeoutMS = 20000

// accessGranularity is how stale last_access_ts may get before a download
// writes it again: the expiry job counts in days, and a write per
// download of a popular avatar would be wasted.
const accessGranularity = 10 * time.Minute

// remoteCache fetches other servers' media into the repository, at most
// once at a time per item in this process.
type remoteCache struct {
	fed Federation
	cfg RemoteSettings

	mu      sync.Mutex
	fetches map[string]*fetchCall
}

// fetchCall is one fetch that concurrent requests for the same item wait on.
type fetchCall struct {
	done chan struct{}
	err  error
	// waiters counts the requests that waited on it (under the cache's
	// mutex), for tests.
	waiters int
}

// SetFederation wires the fetcher of other servers' media; without it
// remote media is answered 404.
func (s *Service) SetFederation(f Federation, cfg RemoteSettings) {
	s.remote = &remoteCache{fed: f, cfg: cfg, fetches: map[string]*fetchCall{}}
}

// getRemote returns cached remote media, fetching it first when allowed.
func (s *Service) getRemote(ctx context.Context, server, id string, allowFetch bool) (*Media, error) {
	if _, err := servername.Parse(server); err != nil || !ValidMediaID(id) {
		return nil, ErrNotFound
	}
	// As in Synapse, a server in prevent_media_downloads_from has its
	// media refused even when cached: the list is moderation tooling.
	if s.remote != nil && s.remote.cfg.PreventDownloadsFrom[server] {
		return nil, ErrNotFound
	}
	m, err := s.cachedRemote(ctx, server, id)
	if m != nil || err != nil {
		return m, err
	}
	if s.remote == nil {
		return nil, ErrRemote
	}
	if !allowFetch {
		return nil, ErrNotFound
	}
	if err := s.remote.once(ctx, server+"/"+id, func(ctx context.Context) error {
		return s.fetchRemote(ctx, server, id)
	}); err != nil {
		return nil, err
	}
	m, err = s.cachedRemote(ctx, server, id)
	if m == nil && err == nil {
		return nil, ErrNotFound
	}
	return m, err
}

// cachedRemote returns the cached item (nil if not cached), noting the
// access for the expiry job.
func (s *Service) cachedRemote(ctx context.Context, server, id string) (*Media, error) {
	m, err := s.meta.get(ctx, server, id)
	if err != nil || m == nil || !m.Uploaded {
		return nil, err
	}
	if m.QuarantinedBy != "" {
		return nil, ErrQuarantined
	}
	if now := s.nowMS(); now-m.LastAccessTS >= accessGranularity.Milliseconds() {
		if err := s.meta.touch(ctx, server, id, now); err != nil {
			// Serving matters more than the bookkeeping.
			s.log.Warn("could not record remote media access", "server", server, "media_id", id, "err", err)
		}
	}
	return m, nil
}

// once runs fetch unless a fetch of key is already running, and returns
// its result either way. The fetch runs apart from the requests' contexts:
// a client that gives up must not fail the others waiting on it, and a
// fetch that completes fills the cache for the next one.
func (rc *remoteCache) once(ctx context.Context, key string, fetch func(context.Context) error) error {
	rc.mu.Lock()
	call, running := rc.fetches[key]
	if !running {
		call = &fetchCall{done: make(chan struct{})}
		rc.fetches[key] = call
		go func() {
			call.err = runFetch(context.WithoutCancel(ctx), fetch)
			rc.mu.Lock()
			delete(rc.fetches, key)
			rc.mu.Unlock()
			close(call.done)
		}()
	}
	call.waiters++
	rc.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return errors.Join(errWaitCancelled, ctx.Err())
	}
}

// runFetch runs fetch, turning a panic into an error: the fetch runs
// outside any handler's recovery, on content another server chose (the
// thumbnailer decodes it), and must not take the process down.
func runFetch(ctx context.Context, fetch func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: panic: %v", ErrRemoteFailed, p)
		}
	}()
	return fetch(ctx)
}

// remoteFile is a remote download being read.
type remoteFile struct {
	body        io.Reader
	contentType string
	name        string
	close       func()
}

// fetchRemote downloads an item into the store and records it.
func (s *Service) fetchRemote(ctx context.Context, server, id string) error {
	f, err := s.downloadRemote(ctx, server, id)
	if err != nil {
		return s.remoteErr(server, id, err)
	}
	defer f.close()
	st, err := s.stage(ctx, f.body)
	if err != nil {
		return s.remoteErr(server, id, err)
	}
	now := s.nowMS()
	m := &Media{ServerName: server, MediaID: id, CreatedTS: now, ContentType: f.contentType, UploadName: f.name,
		Uploaded: true, Length: st.Size(), SHA256: st.SHA256(), Authenticated: s.cfg.AuthenticatedMedia, LastAccessTS: now}
	inserted, err := s.meta.insertRemote(ctx, m)
	if err != nil {
		st.Discard()
		return err
	}
	if !inserted {
		// Another process cached it meanwhile; ours may be different
		// content nothing names.
		st.Discard()
		s.removeUnreferenced(ctx, m.SHA256)
		return nil
	}
	if err := s.finish(st); err != nil {
		return err
	}
	s.pregenerate(ctx, m)
	return nil
}

// remoteErr maps a failed fetch to the errors the handlers know.
func (s *Service) remoteErr(server, id string, err error) error {
	var he *client.HTTPError
	switch {
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrRemoteTooLarge):
		return ErrRemoteTooLarge
	case errors.Is(err, client.ErrNotWhitelisted):
		return ErrRemoteDenied
	case errors.As(err, &he) && he.Status == http.StatusNotFound:
		return ErrNotFound
	}
	s.log.Info("could not fetch remote media", "server", server, "media_id", id, "err", err)
	return fmt.Errorf("%w %s/%s: %w", ErrRemoteFailed, server, id, err)
}

// downloadRemote asks the authenticated federation endpoint first and the
// legacy media endpoint when the remote server does not know the former.
func (s *Service) downloadRemote(ctx context.Context, server, id string) (*remoteFile, error) {
	resp, err := s.remote.fed.Stream(ctx, client.Request{Method: http.MethodGet, Destination: server,
		Path: fmt.Sprintf("/_matrix/federation/v1/media/download/%s?timeout_ms=%d", url.PathEscape(id), remoteTimeoutMS)})
	if err == nil {
		f, err := s.readMultipart(ctx, resp)
		if err != nil {
			resp.Body.Close()
			return nil, err
		}
		return f, nil
	}
	if !unknownEndpoint(err) {
		return nil, err
	}
	resp, err = s.remote.fed.Stream(ctx, client.Request{Method: http.MethodGet, Destination: server,
		Path: fmt.Sprintf("/_matrix/media/v3/download/%s/%s?allow_remote=false&timeout_ms=%d",
			url.PathEscape(server), url.PathEscape(id), remoteTimeoutMS)})
	if err != nil {
		return nil, err
	}
	return s.plainFile(resp)
}

// unknownEndpoint reports whether an error answer means the server does
// not have the authenticated federation media endpoint (older servers):
// the spec's 404 M_UNRECOGNIZED, or a bare 404, 400 M_UNRECOGNIZED or 405.
// A 404 M_NOT_FOUND is the server saying the media does not exist.
func unknownEndpoint(err error) bool {
	var he *client.HTTPError
	if !errors.As(err, &he) {
		return false
	}
	switch he.Status {
	case http.StatusNotFound:
		return he.Errcode == "" || he.Errcode == "M_UNRECOGNIZED"
	case http.StatusBadRequest:
		return he.Errcode == "M_UNRECOGNIZED"
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return true
	}
	return false
}

// tooLarge checks a declared length against max_upload_size before any
// of the body is read.
func (s *Service) tooLarge(n int64) bool {
	return s.cfg.MaxUploadSize >= 0 && n > s.cfg.MaxUploadSize
}

// plainFile is a download answered with the bytes as the body (the legacy
// endpoint, or where a Location points).
func (s *Service) plainFile(resp *http.Response) (*remoteFile, error) {
	if s.tooLarge(resp.ContentLength) {
		resp.Body.Close()
		return nil, ErrRemoteTooLarge
	}
	return &remoteFile{body: resp.Body, contentType: partType(resp.Header.Get("Content-Type")),
		name: dispositionName(resp.Header.Get("Content-Disposition")), close: func() { resp.Body.Close() }}, nil
}

// maxMetadataPart bounds the JSON part of a federation media answer.
const maxMetadataPart = 64 << 10

// readMultipart reads the spec's multipart/mixed answer: a JSON object of
// metadata, then the content itself or a part whose Location says where
// to get it.
func (s *Service) readMultipart(ctx context.Context, resp *http.Response) (*remoteFile, error) {
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return nil, fmt.Errorf("media answer is %q, not multipart/mixed with a boundary", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	meta, err := mr.NextPart()
	if err != nil {
		return nil, fmt.Errorf("read media metadata part: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(meta, maxMetadataPart+1))
	if err != nil {
		return nil, fmt.Errorf("read media metadata part: %w", err)
	}
	var obj map[string]json.RawMessage
	if len(raw) > maxMetadataPart || json.Unmarshal(raw, &obj) != nil || obj == nil {
		return nil, errors.New("media metadata part is not a JSON object")
	}
	part, err := mr.NextPart()
	if err != nil {
		return nil, fmt.Errorf("read media content part: %w", err)
	}
	if loc := part.Header.Get("Location"); loc != "" {
		resp.Body.Close()
		redirected, err := s.remote.fed.FetchURL(ctx, loc)
		if err != nil {
			return nil, err
		}
		return s.plainFile(redirected)
	}
	return &remoteFile{body: part, contentType: partType(part.Header.Get("Content-Type")),
		name: dispositionName(part.Header.Get("Content-Disposition")), close: func() { resp.Body.Close() }}, nil
}

// partType is the content type to record for a remote file.
func partType(ct string) string {
	if ct == "" {
		return "application/octet-stream"
	}
	if _, _, err := mime.ParseMediaType(ct); err != nil {
		return "application/octet-stream"
	}
	return ct
}

// dispositionName is the file name a Content-Disposition suggests
// (filename* decoded), cleaned as a client's would be; "" if none.
func dispositionName(cd string) string {
	if cd == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(cd)
	if err != nil || params["filename"] == "" {
		return ""
	}
	name, err := cleanFileName(params["filename"])
	if err != nil {
		return ""
	}
	return name
}

// removeUnreferenced drops content no row names (after a lost race).
func (s *Service) removeUnreferenced(ctx context.Context, sha string) {
	err := s.store.Remove(ctx, sha, func(ctx context.Context) (bool, error) { return s.meta.referenced(ctx, sha) })
	if err != nil {
		s.log.Warn("could not remove media content", "sha256", sha, "err", err)
	}
}

// PurgeRemoteCache deletes cached remote media last served before
// beforeMS, except quarantined items (kept so that they stay refused) and
// protected ones. It returns how many items went.
func (s *Service) PurgeRemoteCache(ctx context.Context, beforeMS int64) (int, error) {
	const batch = 500
	total := 0
	for {
		ids, err := s.meta.staleRemote(ctx, s.cfg.ServerName, beforeMS, batch)
		if err != nil {
			return total, err
		}
		for _, k := range ids {
			found, err := s.Delete(ctx, k[0], k[1])
			if err != nil {
				return total, fmt.Errorf("purge remote media %s/%s: %w", k[0], k[1], err)
			}
			if found {
				total++
			}
		}
		if len(ids) < batch {
			return total, nil
		}
	}
}

// ExpireRemoteCache is the media_retention.remote_media_lifetime job.
func (s *Service) ExpireRemoteCache(ctx context.Context) error {
	if s.remote == nil || s.remote.cfg.Lifetime <= 0 {
		return nil
	}
	n, err := s.PurgeRemoteCache(ctx, s.now().Add(-s.remote.cfg.Lifetime).UnixMilli())
	if n > 0 {
		s.log.Info("purged remote media not accessed within remote_media_lifetime", "count", n)
	}
	return err
}
