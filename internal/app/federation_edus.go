package app

import (
	"ganglion/internal/accounts"
	"ganglion/internal/federation/edus"
	"ganglion/internal/federation/queries"
	"ganglion/internal/keys"
	"ganglion/internal/presence"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
	"ganglion/internal/todevice"
	"ganglion/internal/typing"
)

// fedParts are the federation pieces one wiring step builds and a later
// one uses.
type fedParts struct {
	edus *edus.Handlers // inbound EDU handlers (wireFederationEDUs)
}

// federationEDUDeps are the writers inbound EDUs are handed to: local on
// their stream's writer, forwarding over HTTP replication elsewhere, the
// same the client API holds.
type federationEDUDeps struct {
	typing   typing.Writer
	receipts receipts.Writer
	presence presence.Writer
	toDevice todevice.Writer
	keys     *keys.Service
	rooms    *rooms.Store
	accounts *accounts.Service
	roomSvc  *rooms.Service
}

// wireFederationEDUs builds the handlers of inbound EDUs (registered on
// the inbound server by wireInboundFederation) and lets the client API
// ask other servers: remote users' keys in /keys/query and /keys/claim,
// remote profiles and aliases. Remote presence is taken only with
// presence.enabled, as Synapse does (and only where presence is tracked:
// the untracked mode's writer records nothing).
func (p *Process) wireFederationEDUs(d federationEDUDeps) {
	fc := p.federationClient
	if fc == nil {
		return
	}
	d.keys.SetFederation(fc)
	q := queries.New(fc, 0)
	d.accounts.SetRemoteProfiles(q)
	d.roomSvc.SetRemoteDirectory(q)
	deps := edus.Deps{Typing: d.typing, Receipts: d.receipts, ToDevice: d.toDevice, Keys: d.keys, Rooms: d.rooms}
	if fw, ok := d.presence.(presence.FederationWriter); ok && p.cfg.Presence.Enabled {
		deps.Presence = fw
	}
	p.fed.edus = edus.New(edus.Options{ServerName: p.cfg.ServerName}, deps, p.log.With("module", "federation.edus"))
}
