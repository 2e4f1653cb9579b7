package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/federation/inbound"
	"ganglion/internal/federation/xmatrix"
	"ganglion/internal/keys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// wireInboundFederation mounts the federation endpoints other servers
// read rooms, profiles, aliases, the room directory and
// local users' devices and keys through, and push transactions to
// (PUT /send: its PDUs go to remote, its EDUs to the handlers registered
// with HandleEDU), behind X-Matrix authentication with the keyring
// wireFederation built. Every process mounts them; listeners serve them
// where they have the federation resource and the routing table gives
// them to the process's role (federation_read: main and generic workers;
// federation_inbound, /send, sticky by origin).
func (p *Process) wireInboundFederation(mux *mxhttp.Mux, srv *mxhttp.Server, roomSvc *rooms.Service, acc *accounts.Service,
	keysSvc *keys.Service, remote rooms.RemoteWriter) {
	cfg := p.cfg
	log := p.log.With("module", "federation.inbound")
	auth := &xmatrix.Authenticator{
		ServerName:      cfg.ServerName,
		Keys:            p.serverKeys,
		DomainWhitelist: cfg.FederationDomains(),
		Log:             log,
	}
	in := inbound.New(inbound.Config{
		ServerName:         cfg.ServerName,
		AllowProfileLookup: cfg.ProfileLookupOverFederation(),
		AllowPublicRooms:   cfg.AllowPublicRoomsOverFederation,
		AllowDeviceNames:   cfg.AllowDeviceNameLookupOverFederation,
	}, roomSvc, acc, log).WithKeys(keysSvc).WithSend(inbound.SendOptions{
		Remote:   remote,
		Fetch:    p.federationClient,
		Verifier: p.serverKeys,
		DB:       p.db,
	}).RegisterMetrics(p.metrics.Registerer())
	if p.fed.edus != nil {
		p.fed.edus.Register(in)
	}
	in.Routes(mux, srv, auth)
}
