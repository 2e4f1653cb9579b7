package app

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"

	"ganglion/internal/accountdata"
	"ganglion/internal/caches"
	"ganglion/internal/push"
	"ganglion/internal/replication"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// wirePush sets up push rules: the push_rules writer here or a client of
// it, the stream's source, and evaluation in this process's persister (if
// it is one), and the pusher loop where pusher_instances says. rpcServer and rpcClient are nil in a monolith without Redis.
func wirePush(ctx context.Context, p *Process, db *storage.DB, reg *streams.Registry, rpcServer *replication.Server,
	rpcClient *replication.Client, persister *rooms.Persister, roomSvc *rooms.Service, adSvc *accountdata.Service, inv *caches.Invalidator, log *slog.Logger) (*push.Service, error) {
	cfg := p.cfg
	svc := push.NewService(db, reg, log)
	svc.SetEmailNotifications(cfg.Email.EnableNotifs)
	reg.SetSource(streams.PushRules, push.NewSource(db, svc.Changed))
	if reg.IsWriter(streams.PushRules) {
		lw, err := push.NewLocalWriter(ctx, db, reg, svc.Changed, log)
		if err != nil {
			return nil, err
		}
		p.positions = append(p.positions, lw)
		svc.SetWriter(lw)
		if rpcServer != nil {
			push.Serve(rpcServer, lw)
		}
	} else {
		svc.SetWriter(push.NewRemoteWriter(rpcClient, reg.Writers(streams.PushRules)[0]))
	}
	svc.SetEventLoader(func(ctx context.Context, userID string, ids []string) (map[string]push.EventView, error) {
		stored, err := roomSvc.Store().EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		list := make([]*rooms.StoredEvent, 0, len(stored))
		for _, se := range stored {
			list = append(list, se)
		}
		formatted, err := roomSvc.Formatter(userID, "").Format(ctx, list)
		if err != nil {
			return nil, err
		}
		out := make(map[string]push.EventView, len(formatted))
		for _, ev := range formatted {
			out[ev.EventID] = push.EventView{Event: ev, OriginServerTS: ev.OriginServerTS}
		}
		return out, nil
	})
	// push.enabled: false (Synapse's key) turns evaluation off: sends then
	// write no push actions, so nothing notifies, counts or is pushed.
	if persister != nil && cfg.Push.Enabled {
		hook := push.NewHook(db, svc, cfg.ServerName, log)
		persister.AddBatchHook(hook)
		inv.Register(push.IgnoredCacheName, hook.IgnoredChanged)
	}
	// Whoever changes an ignore list announces it on the caches stream,
	// so that the persisters' evaluation stops notifying of the ignored.
	adSvc.OnIgnoredListChange(func(ctx context.Context, userID string) {
		if err := inv.Invalidate(ctx, push.IgnoredCacheName, []string{userID}); err != nil {
			log.Warn("could not announce an ignore list change", "user_id", userID, "err", err)
		}
	})
	// The pusher loop runs on pusher_instances (main by default), each
	// instance sending for the users that shard to it.
	if pushers := cfg.Pushers(); slices.Contains(pushers, cfg.InstanceName()) {
		opts := push.DeliveryOptions{}
		if e := cfg.Email; e.EnableNotifs {
			opts.Email = &push.EmailSettings{Host: e.SMTPHost, Port: e.SMTPPort, User: e.SMTPUser, Pass: e.SMTPPass,
				RequireTLS: e.RequireTransportSecurity, EnableTLS: e.EnableTLS, ForceTLS: e.ForceTLS, AppName: e.AppName,
				// As in Synapse, notif_from may name the app with %(app)s.
				From:          strings.ReplaceAll(e.NotifFrom, "%(app)s", e.AppName),
				ClientBaseURL: e.ClientBaseURL, Delay: e.MailDelay()}
		}
		p.runners = append(p.runners, push.NewDelivery(db, reg, cfg.InstanceName(), pushers, opts, log).Run)
	}
	return svc, nil
}

// deviceHooks runs several domains' clean-up of a deleted device.
type deviceHooks []func(ctx context.Context, userID, deviceID string) error

// DeleteDeviceInbox implements accounts.DeviceHooks (its one method is
// named after its first user, to-device): every hook runs.
func (h deviceHooks) DeleteDeviceInbox(ctx context.Context, userID, deviceID string) error {
	var errs []error
	for _, f := range h {
		errs = append(errs, f(ctx, userID, deviceID))
	}
	return errors.Join(errs...)
}
