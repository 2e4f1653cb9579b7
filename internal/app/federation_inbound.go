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
// local users' devices and keys through, behind X-Matrix
// authentication with the keyring wireFederation built. Every process
// mounts them; listeners serve them where they have the federation
// resource and the routing table gives them to the process's role
// (federation_read: main and generic workers).
func (p *Process) wireInboundFederation(mux *mxhttp.Mux, srv *mxhttp.Server, roomSvc *rooms.Service, acc *accounts.Service, keysSvc *keys.Service) {
	cfg := p.cfg
	log := p.log.With("module", "federation.inbound")
	auth := &xmatrix.Authenticator{
		ServerName:      cfg.ServerName,
		Keys:            p.serverKeys,
		DomainWhitelist: cfg.FederationDomains(),
		Log:             log,
	}
	inbound.New(inbound.Config{
		ServerName:         cfg.ServerName,
		AllowProfileLookup: cfg.ProfileLookupOverFederation(),
		AllowPublicRooms:   cfg.AllowPublicRoomsOverFederation,
		AllowDeviceNames:   cfg.AllowDeviceNameLookupOverFederation,
	}, roomSvc, acc, log).WithKeys(keysSvc).WithForwarder(p.fedClient).Routes(mux, srv, auth)
	roomSvc.SetRemoteHierarchy(remoteHierarchy{p.fedClient})
}
