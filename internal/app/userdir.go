package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/ratelimit"
	"ganglion/internal/rooms"
	"ganglion/internal/search"
	"ganglion/internal/userdir"
)

// wireDirectoryAndSearch adds the user directory and full-text search. The
// search index is written by this process's persister (if it is one) in its
// event transactions; the directory is updated by the one instance named by
// update_user_directory_from_worker; both endpoints are served everywhere
// from the shared tables.
func (p *Process) wireDirectoryAndSearch(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service,
	roomSvc *rooms.Service, persister *rooms.Persister, limiter *ratelimit.Limiter) {
	cfg := p.cfg
	searchStore := search.NewStore(p.db)
	if persister != nil {
		persister.AddBatchHook(searchStore)
	}
	search.NewService(searchStore, roomSvc, p.log).Routes(mux, srv, acc)

	dirStore := userdir.NewStore(p.db, cfg.ServerName)
	acc.SetProfileIndex(dirStore)
	if cfg.UpdatesUserDirectory() {
		p.runners = append(p.runners, userdir.NewUpdater(dirStore, p.reg, p.log).Run)
	}
	ud := cfg.UserDirectory
	userdir.NewService(dirStore, ud.Enabled, userdir.SearchOptions{
		SearchAllUsers: ud.SearchAllUsers, PreferLocalUsers: ud.PreferLocalUsers, ExcludeRemoteUsers: ud.ExcludeRemoteUsers,
	}, limiter).Routes(mux, srv, acc)
}
