package app

import (
	"context"
	"fmt"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/keys"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// wireKeys builds the E2EE domain: the device_lists stream (a local writer
// on each configured writer; updates sharded by user over the writers,
// forwarded over HTTP replication to the others) and the keys service,
// hooked into accounts so device logins, renames and deletions are
// announced (and, on a device_lists writer, the drainer of device list
// changes recorded but never announced). rpcClient and rpcServer are nil
// outside a fleet.
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
	shards, err := deviceListShards(reg.Writers(streams.DeviceLists), p.cfg.InstanceMap, rpcClient != nil, reg.Instance())
	if err != nil {
		return nil, err
	}
	remote := func(writer string) keys.Writer { return keys.NewRemoteWriter(rpcClient, writer) }
	w := keys.NewShardedWriter(reg.Instance(), shards, local, remote)
	svc := keys.NewService(p.db, reg, w, p.cfg.ServerName, p.log)
	acc.SetDeviceListHook(svc)
	acc.SetDeactivationHook(svc)
	if local != nil {
		// Device list changes recorded by a process that died (or could
		// not reach this writer) before announcing them.
		p.runners = append(p.runners, func(ctx context.Context) error { return svc.RunOutboxDrainer(ctx, w.Owns) })
	}
	return svc, nil
}

// deviceListShards are the device_lists writers users are sharded over:
// those other processes can reach, the main process and writers in
// instance_map (config validation lets a device_lists writer be missing
// from instance_map, as Synapse does, but updates are forwarded to their
// shard over HTTP replication). Every process derives the same list from
// the shared config, so all agree on each user's writer.
func deviceListShards(writers []string, instanceMap map[string]config.InstanceLocation, fleet bool, instance string) ([]string, error) {
	if !fleet {
		return writers, nil
	}
	var out []string
	for _, w := range writers {
		if _, ok := instanceMap[w]; ok || w == config.MainInstance {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("instance %s: stream_writers.device_lists %v: no writer is the main process or in instance_map, so device list changes cannot reach any", instance, writers)
	}
	return out, nil
}
