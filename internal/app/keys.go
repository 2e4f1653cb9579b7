package app

import (
	"context"

	"ganglion/internal/accounts"
	"ganglion/internal/keys"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// wireKeys builds the E2EE domain: the device_lists stream (a local writer
// on each configured writer; updates sharded by user over the writers,
// forwarded over HTTP replication to the others) and the keys service,
// hooked into accounts so device logins, renames and deletions are
// announced. rpcClient and rpcServer are nil outside a fleet.
func (p *Process) wireKeys(ctx context.Context, reg *streams.Registry, acc *accounts.Service,
	rpcClient *replication.Client, rpcServer *replication.Server) (*keys.Service, error) {
	reg.SetSource(streams.DeviceLists, keys.NewSource(p.db))
	var local *keys.LocalWriter
	if reg.IsWriter(streams.DeviceLists) {
		lw, err := keys.NewLocalWriter(ctx, p.db, reg, p.log)
		if err != nil {
			return nil, err
		}
		p.positions = append(p.positions, lw)
		local = lw
		if rpcServer != nil {
			keys.Serve(rpcServer, lw)
		}
	}
	remote := func(writer string) keys.Writer { return keys.NewRemoteWriter(rpcClient, writer) }
	w := keys.NewShardedWriter(reg.Instance(), reg.Writers(streams.DeviceLists), local, remote)
	svc := keys.NewService(p.db, reg, w, p.cfg.ServerName, p.log)
	acc.SetDeviceListHook(svc)
	return svc, nil
}
