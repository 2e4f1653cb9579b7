package app

import (
	"context"
	"net/url"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/federation/client"
	"ganglion/internal/mxhttp"
	"ganglion/internal/openid"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
)

// wireOpenID mounts the OpenID token endpoints: the client's
// request_token and the federation userinfo a third party checks a token
// with (served where the routing table sends it; tokens are in the
// database, so any process answers).
func (p *Process) wireOpenID(mux *mxhttp.Mux, srv *mxhttp.Server, db *storage.DB, acc *accounts.Service) {
	openid.New(db, p.cfg.ServerName, openid.Options{}, p.log.With("module", "openid")).Routes(mux, srv, acc.Auth)
}

// remoteHierarchy asks other servers for rooms of a space this server
// does not have (the client /hierarchy).
type remoteHierarchy struct{ c *client.Client }

func (r remoteHierarchy) FederationHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*rooms.FederationHierarchy, error) {
	var out rooms.FederationHierarchy
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID) + "?suggested_only=" + strconv.FormatBool(suggestedOnly)
	if err := r.c.SignedGetJSON(ctx, server, path, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
