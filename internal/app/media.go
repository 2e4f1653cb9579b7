package app

import (
	"fmt"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/background"
	"ganglion/internal/config"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/locks"
	"ganglion/internal/media"
	"ganglion/internal/mxhttp"
	"ganglion/internal/routes"
)

// mediaExpireEvery is how often the media background instance drops ids
// reserved by /create whose content never came.
const mediaExpireEvery = 10 * time.Minute

// remoteExpireEvery is how often the remote media cache is purged of what
// was not served within media_retention.remote_media_lifetime (Synapse's
// period: a day).
const remoteExpireEvery = 24 * time.Hour

// wireMedia mounts the media repository when this instance serves it (a
// media_repository worker, or main and generic workers unless
// enable_media_repo is false), and runs its cleanup jobs on the instance
// named by media_instance_running_background_jobs.
func (p *Process) wireMedia(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service, lk *locks.Locks) error {
	cfg := p.cfg
	if !cfg.CanLoadMediaRepo() {
		return nil
	}
	store, err := media.NewLocalStore(cfg.MediaStorePath)
	if err != nil {
		return fmt.Errorf("media_store_path: %w", err)
	}
	var sizes []media.ThumbnailSize
	for _, s := range cfg.EffectiveThumbnailSizes() {
		sizes = append(sizes, media.ThumbnailSize{Width: s.Width, Height: s.Height, Method: s.Method})
	}
	preview := media.PreviewSettings{Enabled: cfg.URLPreviewEnabled, MaxSize: cfg.SpiderBytes()}
	for _, r := range cfg.URLPreviewIPRangeBlock {
		pr, err := config.ParsePrefix(r)
		if err != nil {
			return fmt.Errorf("url_preview_ip_range_blacklist: %w", err)
		}
		preview.Block = append(preview.Block, pr)
	}
	for _, r := range cfg.URLPreviewIPRangeAllow {
		pr, err := config.ParsePrefix(r)
		if err != nil {
			return fmt.Errorf("url_preview_ip_range_whitelist: %w", err)
		}
		preview.Allow = append(preview.Allow, pr)
	}
	for _, pat := range cfg.URLPreviewURLBlock {
		preview.URLBlock = append(preview.URLBlock, pat)
	}
	svc := media.NewService(p.db, store, media.Settings{
		ServerName:         cfg.ServerName,
		MaxUploadSize:      cfg.MaxUploadBytes(),
		ThumbnailSizes:     sizes,
		DynamicThumbnails:  cfg.DynamicThumbnails,
		MaxImagePixels:     cfg.MaxImagePixelCount(),
		AuthenticatedMedia: cfg.AuthenticatedMedia(),
		MaxPendingUploads:  cfg.PendingMediaUploads(),
		Preview:            preview,
	}, p.log)
	svc.Routes(mux, srv, acc)
	svc.FederationRoutes(mux, srv, &xmatrix.Authenticator{
		ServerName:      cfg.ServerName,
		Keys:            p.serverKeys,
		DomainWhitelist: cfg.FederationDomains(),
		Log:             p.log.With("module", "media.federation"),
	})
	if p.federationClient != nil {
		svc.SetFederation(p.federationClient, media.RemoteSettings{
			PreventDownloadsFrom: cfg.MediaDownloadsPrevented(),
			Lifetime:             cfg.MediaRetention.RemoteMediaLifetime.Must(),
		})
	}
	if cfg.MediaRetention.LocalMediaLifetime.Set() {
		p.log.Warn("media_retention.local_media_lifetime is not built yet: local media is kept")
	}
	jobs := background.NewRunner(lk, cfg.RunsMediaBackgroundJobs(), p.log, nil)
	jobs.Add(background.Job{Name: "media_expire_unused", Every: mediaExpireEvery, Run: svc.ExpireUnused})
	jobs.Add(background.Job{Name: "media_expire_url_cache", Every: mediaExpireEvery, Run: svc.ExpireURLCache})
	jobs.Add(background.Job{Name: "media_expire_remote_cache", Every: remoteExpireEvery, Run: svc.ExpireRemoteCache})
	p.runners = append(p.runners, jobs.Run)
	return nil
}

// mediaListener reports whether a listener with these resources serves the
// media repository: as in Synapse, the media, client and federation
// resources all include it.
func mediaListener(allowed map[string]bool) bool {
	return allowed["media"] || allowed["client"] || allowed["federation"]
}

// mediaClass reports whether the routing table gives a request (of class
// c) to the media repository; on a media listener these are served even
// under /_matrix/client/v1/media and /_synapse/admin.
func mediaClass(c *routes.Class) bool {
	return c != nil && c.Duty == routes.DutyMedia
}
