package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/joins"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// wireFederationMembership wires both sides of the federation membership
// handshakes: the make_*/send_*/invite endpoints other servers call
// (inbound, next to the read side wireInboundFederation mounts), and the
// joins, knocks, leaves and invites the room endpoints make through other
// servers (joins.Joiner as the rooms service's RemoteMembership). Both
// persist other servers' events through the event writer's remote path
// (rooms.RemoteWriter); a writer without one leaves them unwired, and the
// process answers as a server that does not federate memberships.
func (p *Process) wireFederationMembership(mux *mxhttp.Mux, srv *mxhttp.Server, key events.SigningKey, roomSvc *rooms.Service,
	writer rooms.EventWriter, acc *accounts.Service) {
	rw, ok := writer.(rooms.RemoteWriter)
	if !ok || p.federationClient == nil || p.serverKeys == nil {
		p.log.Info("federation membership handshakes are off: the event writer has no remote path")
		return
	}
	cfg := p.cfg
	log := p.log.With("module", "federation.membership")
	auth := &xmatrix.Authenticator{
		ServerName:      cfg.ServerName,
		Keys:            p.serverKeys,
		DomainWhitelist: cfg.FederationDomains(),
		Log:             log,
	}
	inbound.New(inbound.Config{ServerName: cfg.ServerName}, roomSvc, acc, log).
		WithMembership(inbound.Membership{Key: key, Keys: p.serverKeys, Writer: rw, DB: p.db, Users: acc}).
		MembershipRoutes(mux, srv, auth)
	roomSvc.SetRemoteMembership(joins.New(joins.Options{ServerName: cfg.ServerName, Key: key},
		p.federationClient, p.serverKeys, roomSvc, rw, log))
}
