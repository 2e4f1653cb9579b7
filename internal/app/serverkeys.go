package app

import (
	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/mxhttp"
)

// wireServerKeys builds the server keys domain: our key server and notary
// on the key API routes (any process: the answers come from the config and
// the server_keys table every process shares), and the keyring federation
// code verifies signatures with, kept as p.serverKeys.
//
// getter and poster are the federation client's; nil turns fetching keys
// from other servers (directly, or from trusted_key_servers) off, and the
// notary then answers from the shared cache only.
func (p *Process) wireServerKeys(mux *mxhttp.Mux, srv *mxhttp.Server, key events.SigningKey,
	getter serverkeys.Getter, poster serverkeys.Poster) error {
	cfg := p.cfg
	old := map[string]serverkeys.OldKey{}
	for id, k := range cfg.OldVerifyKeys() {
		old[id] = serverkeys.OldKey{Key: k.Key, ExpiredTS: k.ExpiredTS}
	}
	local, err := serverkeys.NewLocal(serverkeys.LocalConfig{
		ServerName: cfg.ServerName, Key: key, OldKeys: old, RefreshInterval: cfg.KeyRefreshIntervalValue(),
	})
	if err != nil {
		return err
	}
	var notaries []serverkeys.Notary
	for _, ks := range cfg.KeyServers() {
		notaries = append(notaries, serverkeys.Notary{ServerName: ks.ServerName, VerifyKeys: ks.VerifyKeys})
	}
	if cfg.KeyServersDefaulted() && !cfg.SuppressKeyServerWarning {
		// Synapse's warning: the default trusts matrix.org to vouch for
		// every other server's keys.
		p.log.Warn("trusted_key_servers is not set, so matrix.org is trusted to vouch for other servers' keys; " +
			"set trusted_key_servers (or suppress_key_server_warning: true) to silence this")
	}
	if getter == nil {
		p.log.Info("no federation client: other servers' keys are only read from the shared cache")
	}
	ring := serverkeys.NewKeyring(local, serverkeys.NewStore(p.db), serverkeys.Options{
		Getter: getter, Poster: poster, Notaries: notaries,
	}, p.log.With("module", "serverkeys"))
	ring.Routes(mux, srv)
	p.serverKeys = ring
	p.onShutdown = append(p.onShutdown, ring.Close)
	return nil
}
