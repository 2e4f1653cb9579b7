package app

import (
	"context"
	"time"

	"ganglion/internal/accountdata"
	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/notices"
	"ganglion/internal/ratelimit"
	"ganglion/internal/reports"
	"ganglion/internal/rooms"
	"ganglion/internal/voip"
)

// wireReportsNoticesVoIP serves content reports and their admin API, server
// notices, and /voip/turnServer. Every process installs the notices room
// leave guard (a leave can reach any event creator); the main process
// creates the system user. Which endpoints a worker answers is the
// routing table's business (reports and admin APIs are main's).
func (p *Process) wireReportsNoticesVoIP(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service, roomSvc *rooms.Service,
	adWriter accountdata.Writer, reportLimit *ratelimit.Limiter) {
	cfg := p.cfg
	reports.NewService(p.db, roomSvc, reportLimit, time.Now).Routes(mux, srv, acc)

	ns := notices.NewService(p.db, cfg.ServerName, cfg.ServerNotices, acc, roomSvc, adWriter, p.log)
	roomSvc.SetNoticeRooms(ns)
	ns.Routes(mux, srv, acc)
	if cfg.IsMain() && cfg.ServerNoticesEnabled() {
		p.runners = append(p.runners, func(ctx context.Context) error {
			// Retried: the profile update sends member events, which
			// needs the rooms' persisters, which may still be starting.
			for wait := time.Second; ; wait = min(2*wait, time.Minute) {
				err := ns.EnsureSystemUser(ctx)
				if err == nil {
					return nil
				}
				p.log.Warn("could not set up the server notices user; retrying", "err", err, "retry_in", wait)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		})
	}

	voip.Routes(mux, srv, acc, voip.Settings{URIs: cfg.TURNURIs, SharedSecret: cfg.TURNSecret(), Username: cfg.TURNUsername,
		Password: cfg.TURNPassword, Lifetime: cfg.TURNLifetime()}, time.Now)
}
