package app

import (
	"context"
	"fmt"
	"log/slog"

	"ganglion/internal/config"
	"ganglion/internal/replication"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
	"ganglion/internal/typing"
)

// newBus builds the Redis link from the redis section: authentication,
// TLS and the channel (server_name behind redis.channel_prefix).
func newBus(cfg *config.Config, log *slog.Logger) (*replication.Bus, error) {
	r := cfg.Redis
	opts := replication.RedisOptions{Host: r.Host, Port: r.Port, Path: r.Path, DB: r.DBID, Password: r.EffectivePassword()}
	if r.UseTLS {
		t, err := replication.RedisTLS(r.Host, r.CertificateFile, r.PrivateKeyFile, r.CAFile, r.CAPath)
		if err != nil {
			return nil, fmt.Errorf("redis.use_tls: %w", err)
		}
		opts.TLS = t
	}
	return replication.NewBus(replication.Channel(r.ChannelPrefix, cfg.ServerName), opts, log), nil
}

// replicationBound is how far positions heard on Redis are believed: table
// streams up to their sequence (one read, in the database that is the
// truth), the in-memory typing stream up to what its writer says over HTTP.
func replicationBound(db *storage.DB, client *replication.Client) replication.Bound {
	seq := streams.SequenceBound(db)
	return func(ctx context.Context, name streams.Name, writer string) (int64, error) {
		if d, ok := streams.AllDefsByName()[name]; ok && d.Storage == streams.InMemory {
			return typing.FetchPosition(ctx, client, name, writer)
		}
		return seq(ctx, name, writer)
	}
}
