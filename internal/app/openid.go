package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/openid"
	"ganglion/internal/storage"
)

// wireOpenID mounts the OpenID token endpoints: the client's
// request_token and the federation userinfo a third party checks a token
// with (served where the routing table sends it; tokens are in the
// database, so any process answers).
func (p *Process) wireOpenID(mux *mxhttp.Mux, srv *mxhttp.Server, db *storage.DB, acc *accounts.Service) {
	openid.New(db, p.cfg.ServerName, openid.Options{}, p.log.With("module", "openid")).Routes(mux, srv, acc.Auth)
}
