// Package app wires one Ganglion process from its config: which modules
// run, which stream writers are local, which listeners serve what. Nothing
// else in the code base knows how a process is assembled.
package app

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"ganglion/internal/accountdata"
	"ganglion/internal/accounts"
	"ganglion/internal/background"
	"ganglion/internal/caches"
	"ganglion/internal/config"
	"ganglion/internal/dehydrated"
	"ganglion/internal/events"
	"ganglion/internal/federation/backfill"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/filters"
	"ganglion/internal/forwarded"
	"ganglion/internal/httpguard"
	"ganglion/internal/locks"
	"ganglion/internal/metrics"
	"ganglion/internal/mxhttp"
	"ganglion/internal/presence"
	"ganglion/internal/push"
	"ganglion/internal/ratelimit"
	"ganglion/internal/receipts"
	"ganglion/internal/replication"
	"ganglion/internal/rooms"
	"ganglion/internal/routes"
	"ganglion/internal/storage"
	"ganglion/internal/streams"
	"ganglion/internal/sync"
	"ganglion/internal/todevice"
	"ganglion/internal/tracing"
	"ganglion/internal/typing"
)

// Process is one running Ganglion instance.
type Process struct {
	cfg        *config.Config
	log        *slog.Logger
	db         *storage.DB
	reg        *streams.Registry
	replicator *replication.Replicator // nil in a monolith without Redis
	handler    http.Handler
	started    time.Time
	// metrics is the process's registry, served on the metrics resource;
	// httpMetrics measures every request a listener answers.
	metrics     *metrics.Registry
	httpMetrics *metrics.HTTP
	// tracer is the opentelemetry section's (disabled by default).
	tracer *tracing.Tracer
	// serverKeys finds other servers' signing keys (and serves ours).
	serverKeys *serverkeys.Keyring
	// remoteWriter hands events other servers built to their room's
	// persister.
	remoteWriter rooms.RemoteWriter
	// federationClient is the outbound federation client wireFederation
	// built (the media repository fetches remote media with it).
	federationClient *client.Client
	// fed holds what federation_edus.go shares between wiring steps.
	fed fedParts

	// runners are the long-running modules (timers, periodic jobs); they
	// run under Run's context and stop with it.
	runners []func(ctx context.Context) error
	// positions are the local stream writers whose positions are saved
	// periodically and at shutdown.
	positions []positionSaver
	// beforeModulesStop runs after the listeners stop, while the modules
	// (the Redis link among them) still run.
	beforeModulesStop []func(ctx context.Context) error
	// onShutdown runs after the modules stop, before the database closes.
	onShutdown []func(ctx context.Context) error

	// unrecognizedRequests counts requests for endpoints this process does
	// not serve (see unrecognized).
	unrecognizedRequests atomic.Int64

	mu        gosync.Mutex
	listeners []net.Listener
	servers   []*http.Server
}

type positionSaver interface {
	Position() int64
	SavePosition(ctx context.Context) error
}

// New builds the process: opens the database (migrating it on the main
// process, waiting for the schema on workers), loads the signing key, and
// wires the domains.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) (*Process, error) {
	p := &Process{cfg: cfg, log: log, started: time.Now(), metrics: metrics.New(cfg.InstanceName())}
	for _, o := range opts {
		o(p)
	}
	engine := storage.SQLite
	if cfg.Database.Engine() == config.EnginePostgres {
		engine = storage.Postgres
	}
	db, err := storage.Open(ctx, storage.Options{Engine: engine, DSN: cfg.Database.DSN(), MaxConns: cfg.Database.Args.CPMax}, log)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	p.db = db
	metrics.InstrumentDB(p.metrics.Registerer(), db, cfg.MetricsEnabled())
	if err := p.startTracing(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := p.wire(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return p, nil
}

// wire builds every domain of the process. For each stream, the writer is
// local when this instance is the stream's configured writer, and a
// replication client forwarding to the writer otherwise; readers are the
// same everywhere. The monolith is the case where every writer is local.
func (p *Process) wire(ctx context.Context) error {
	cfg, log, db := p.cfg, p.log, p.db
	instance := cfg.InstanceName()
	mr := p.metrics.Registerer()
	if cfg.MetricsEnabled() {
		p.httpMetrics = metrics.NewHTTP(mr)
	}
	if cfg.IsMain() {
		if err := db.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate database: %w", err)
		}
	} else {
		log.Info("waiting for the main process to migrate the database")
		if err := db.WaitForSchema(ctx); err != nil {
			return fmt.Errorf("wait for database schema: %w", err)
		}
	}
	key, err := loadOrCreateSigningKey(cfg.SigningKeyPath, log)
	if err != nil {
		return err
	}

	writers := map[streams.Name][]string{}
	for _, d := range streams.AllDefs() {
		writers[d.Name] = cfg.StreamWriters(string(d.Name))
	}
	// Every process writes its own rows of the caches stream.
	writers[streams.Caches] = []string{instance}
	reg, err := streams.NewRegistry(instance, streams.AllDefs(), writers, streams.NewNotifier())
	if err != nil {
		return err
	}
	p.reg = reg
	p.registerProcessMetrics(mr)
	if err := streams.RepairSavedPositions(ctx, db, log); err != nil {
		return err
	}
	if err := loadWriterPositions(ctx, db, reg); err != nil {
		return err
	}
	ids, err := instanceIDs(ctx, db, reg.Writers(streams.Events))
	if err != nil {
		return err
	}
	reg.SetInstanceIDs(ids)
	rl := func(r config.RateLimit) *ratelimit.Limiter {
		return ratelimit.New(ratelimit.Rule{PerSecond: r.PerSecond, BurstCount: r.BurstCount}, nil)
	}

	// The fleet's plumbing: Redis doorbell, HTTP replication both ways.
	fleet := cfg.Redis.Enabled
	var (
		rpcClient  *replication.Client
		rpcServer  *replication.Server
		replicator *replication.Replicator
	)
	if fleet {
		rpcClient = replication.NewClient(replication.InstanceLookup(cfg.InstanceMap), cfg.ReplicationSecret(), instance, reg, log)
		rpcClient.RegisterMetrics(mr)
		rpcClient.SetTracer(p.tracer)
		rpcServer = replication.NewServer(cfg.ReplicationSecret(), reg, log)
		bus, err := newBus(cfg, log)
		if err != nil {
			return err
		}
		replicator = replication.NewReplicator(bus, reg, replicationBound(db, rpcClient), log)
		p.replicator = replicator
		replicator.RegisterMetrics(mr)
		p.runners = append(p.runners, replicator.Run)
		p.onShutdown = append(p.onShutdown, func(context.Context) error { rpcClient.CloseIdleConnections(); return nil })
	}
	firstWriter := func(name streams.Name) string { return reg.Writers(name)[0] }

	acc := accounts.NewService(db, accounts.Settings{
		ServerName:                cfg.ServerName,
		EnableRegistration:        cfg.EnableRegistration,
		RegistrationWithoutVerify: cfg.EnableRegistrationWithoutVerification,
		RegistrationSharedSecret:  cfg.RegistrationSecret(),
		BcryptRounds:              cfg.BcryptRounds,
		RegistrationRequiresToken: cfg.RegistrationRequiresToken,
		PasswordPolicy:            passwordPolicy(cfg.PasswordConfig),
		PasswordLoginDisabled:     !cfg.PasswordConfig.Enabled.ForLogin(),
		PasswordReauthDisabled:    !cfg.PasswordConfig.Enabled.ForReauth(),
		Lifetimes: accounts.Lifetimes{
			Session:        cfg.SessionLifetime.Must(),
			Refreshable:    cfg.RefreshableAccessTokenLifetime.Must(),
			RefreshToken:   cfg.RefreshTokenLifetime.Must(),
			NonRefreshable: cfg.NonrefreshableAccessTokenLifetime.Must(),
		},
	}, log)

	inv, err := caches.New(ctx, db, reg, log)
	if err != nil {
		return err
	}
	reg.SetSource(streams.Caches, inv)
	inv.Register(accounts.TokenCacheName, acc.DropCachedTokens)
	acc.SetInvalidator(inv)
	if fleet {
		inv.Serve(rpcServer)
		var others []string
		for name := range cfg.InstanceMap {
			if name != instance && !(name == "master" && instance == "main") {
				others = append(others, name)
			}
		}
		inv.SetBroadcast(caches.Broadcaster(rpcClient, others, 2*time.Second, log))
	}
	p.positions = append(p.positions, inv)

	// Events: the persister owns the rooms that hash to this instance.
	roomStore := rooms.NewStore(db)
	// Every state event reaches the store's cache: ours from the
	// persister (below), other persisters' through replication.
	roomStore.EnableStateCache()
	if err := roomStore.WatchMembershipFrom(ctx); err != nil {
		return err
	}
	if err := roomStore.LoadStateResets(ctx); err != nil {
		return err
	}
	reg.SetSource(streams.Events, rooms.NewEventsSource(db, roomStore))
	var persister *rooms.Persister
	if reg.IsWriter(streams.Events) {
		if persister, err = rooms.NewPersister(ctx, db, reg, cfg.ServerName, key, log); err != nil {
			return err
		}
		persister.NotifyStateChanges(roomStore.StateChanged)
		persister.NotifyPersisted(roomStore.EventPersisted)
		persister.NotifyStateResets(roomStore.StateReset)
		persister.RegisterMetrics(mr)
		p.positions = append(p.positions, persister)
		if fleet {
			rooms.ServeSendEvents(rpcServer, persister)
			rooms.ServePersistRemote(rpcServer, persister)
		}
	}
	var eventWriter rooms.EventWriter = persister
	p.remoteWriter = persister
	if fleet {
		sw := rooms.NewShardedWriter(instance, reg.Writers(streams.Events), persister, rpcClient)
		eventWriter, p.remoteWriter = sw, sw
	}
	roomSvc := rooms.NewService(rooms.Config{ServerName: cfg.ServerName, DefaultRoomVersion: cfg.DefaultRoomVersion},
		roomStore, eventWriter, acc, reg, rl(cfg.RCMessage), log)
	roomLimits := rooms.Limits{
		JoinsLocal: rl(cfg.RCJoins.Local), JoinsRemote: rl(cfg.RCJoins.Remote), JoinsPerRoom: rl(cfg.RCJoinsPerRoom),
		InvitesPerRoom: rl(cfg.RCInvites.PerRoom), InvitesPerUser: rl(cfg.RCInvites.PerUser),
		InvitesPerIssuer: rl(cfg.RCInvites.PerIssuer), RoomCreation: rl(cfg.RCRoomCreation),
	}
	if cfg.RCAdminRedaction.Set {
		roomLimits.AdminRedaction = rl(cfg.RCAdminRedaction.RateLimit)
	}
	roomSvc.SetLimits(roomLimits)
	acc.SetRoomHooks(roomSvc)

	var typingWriter typing.Writer
	var typingReader sync.TypingReader
	if reg.IsWriter(streams.Typing) {
		ts, err := typing.NewService(reg, typing.Options{}, log)
		if err != nil {
			return err
		}
		p.runners = append(p.runners, ts.Run)
		reg.SetSource(streams.Typing, ts)
		typingWriter, typingReader = ts, ts
		if fleet {
			typing.Serve(rpcServer, ts)
			typing.ServeStreamUpdates(rpcServer, reg)
		}
	} else {
		replica := typing.NewReplica(typing.FetchUpdates(rpcClient, streams.Typing, firstWriter(streams.Typing)))
		reg.SetSource(streams.Typing, replica)
		typingReader = replica
		typingWriter = typing.NewRemoteWriter(rpcClient, firstWriter(streams.Typing))
	}

	reg.SetSource(streams.Receipts, receipts.NewSource(db))
	receiptsStore := receipts.NewStore(db)
	var receiptsWriter receipts.Writer
	if reg.IsWriter(streams.Receipts) {
		rs, err := receipts.NewService(ctx, db, reg, log)
		if err != nil {
			return err
		}
		p.positions = append(p.positions, rs)
		receiptsWriter = rs
		if fleet {
			receipts.Serve(rpcServer, rs)
		}
	} else {
		receiptsWriter = receipts.NewRemoteWriter(rpcClient, firstWriter(streams.Receipts))
	}

	reg.SetSource(streams.AccountData, accountdata.NewSource(db))
	var adWriter accountdata.Writer
	if reg.IsWriter(streams.AccountData) {
		lw, err := accountdata.NewLocalWriter(ctx, db, reg, log)
		if err != nil {
			return err
		}
		p.positions = append(p.positions, lw)
		adWriter = lw
		if fleet {
			accountdata.Serve(rpcServer, lw)
		}
	} else {
		adWriter = accountdata.NewRemoteWriter(rpcClient, firstWriter(streams.AccountData))
	}
	adSvc := accountdata.NewService(db, reg, adWriter, log)

	pushSvc, err := wirePush(ctx, p, db, reg, rpcServer, rpcClient, persister, roomSvc, adSvc, inv, log)
	if err != nil {
		return err
	}

	reg.SetSource(streams.ToDevice, todevice.NewSource(db))
	var tdWriter todevice.Writer
	if reg.IsWriter(streams.ToDevice) {
		lw, err := todevice.NewLocalWriter(ctx, db, reg, cfg.ServerName, log)
		if err != nil {
			return err
		}
		p.positions = append(p.positions, lw)
		tdWriter = lw
		if fleet {
			todevice.Serve(rpcServer, lw)
		}
	} else {
		tdWriter = todevice.NewRemoteWriter(rpcClient, firstWriter(streams.ToDevice))
	}
	tdSvc := todevice.NewService(db, reg, tdWriter, log)
	acc.SetDeviceHooks(deviceHooks{tdSvc.DeleteDeviceInbox, pushSvc.DeviceGone})

	keysSvc, err := p.wireKeys(ctx, reg, acc, rpcClient, rpcServer)
	if err != nil {
		return err
	}

	presSource := presence.NewSource(db, roomStore, log)
	reg.SetSource(streams.Presence, presSource)
	var presWriter presence.Writer = presence.NoopWriter{}
	tracked := cfg.Presence.Enabled && !cfg.Presence.Untracked
	switch {
	case !tracked:
	case reg.IsWriter(streams.Presence):
		lw, err := presence.NewLocalWriter(ctx, db, reg, roomStore, presence.WriterOptions{ServerName: cfg.ServerName}, log)
		if err != nil {
			return err
		}
		presWriter = lw
		p.runners = append(p.runners, lw.Run)
		p.onShutdown = append(p.onShutdown, lw.Flush)
		if fleet {
			presence.Serve(rpcServer, lw, lw.Position)
			presence.ServeFederation(rpcServer, lw)
			tracker := presence.NewSyncTracker(lw)
			replicator.OnUserSync = tracker.UserSync
			replicator.OnClearUserSync = tracker.Clear
		}
	default:
		rw := presence.NewRemoteWriter(ctx, rpcClient, firstWriter(streams.Presence), replicator.Bus(), replicator.ProcessID(), log)
		presWriter = rw
		presSource.OnRow(rw.Forget)
		replicator.SyncingUsers = rw.Syncing
		// While the Redis link is still up: it closes with the modules.
		p.beforeModulesStop = append(p.beforeModulesStop, func(ctx context.Context) error {
			return replicator.Bus().Publish(ctx, replication.ClearUserSync{InstanceID: replicator.ProcessID()})
		})
	}
	presSvc := presence.NewService(db, reg, presWriter, roomStore,
		presence.Options{Enabled: cfg.Presence.Enabled, ServerName: cfg.ServerName}, log)
	presSvc.SetRateLimit(rl(cfg.RCPresence.PerUser))

	// Locks and the periodic duties of the background-tasks instance.
	lockOpts := locks.Options{}
	if fleet {
		lockOpts.OnRelease = func(name, key string) {
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = replicator.Bus().Publish(pctx, replication.LockReleased{Instance: instance, LockName: name, LockKey: key})
		}
	}
	lk := locks.New(db, instance, lockOpts, log)
	if fleet {
		replicator.OnLockReleased = lk.Released
	}
	jobs := background.NewRunner(lk, cfg.RunsBackgroundTasks(), log, nil)
	for _, j := range []struct {
		name, table, column string
		age                 time.Duration
	}{
		{"prune_uia_sessions", "uia_sessions", "created_ts", 30 * time.Minute},
		{"prune_registration_nonces", "registration_nonces", "created_ts", time.Hour},
		{"prune_to_device_txns", "to_device_txns", "created_ts", 24 * time.Hour},
		{"prune_cache_invalidations", "cache_invalidations", "invalidation_ts", 7 * 24 * time.Hour},
	} {
		job, err := background.PruneTable(db, j.name, j.table, j.column, j.age)
		if err != nil {
			return err
		}
		jobs.Add(job)
	}
	jobs.Add(push.PruneJob(db, cfg.ServerName, log))
	p.runners = append(p.runners, jobs.Run)

	filterStore := filters.NewStore(db)
	syncSvc := sync.NewService(sync.Deps{
		Rooms:          roomSvc,
		Registry:       reg,
		Filters:        filterStore,
		Typing:         typingReader,
		Receipts:       receiptsStore,
		AccountData:    adSvc,
		PushRules:      pushSvc,
		Notifications:  pushSvc,
		ToDevice:       tdSvc,
		Presence:       presSvc,
		PresenceWriter: presWriter,
		Keys:           keysSvc,
	}, log)
	syncSvc.RegisterMetrics(mr)

	mux := mxhttp.NewMux()
	srv := mxhttp.NewServer(log)
	acc.Routes(mux, srv, accounts.Limits{
		Registration:       rl(cfg.RCRegistration),
		LoginAddress:       rl(cfg.RCLogin.Address),
		LoginAccount:       rl(cfg.RCLogin.Account),
		LoginFailedAttempt: rl(cfg.RCLogin.FailedAttempts),
		UIAFailedAttempt:   rl(cfg.RCLogin.FailedAttempts),
		AdminNonce:         rl(cfg.RCRegistration),
		// rc_registration_token_validity, per client IP.
		RegistrationTokenValidity: rl(cfg.RCRegistrationTokenValidity),
	})
	roomSvc.Routes(mux, srv, acc, cfg.AllowPublicRoomsWithoutAuth)
	typing.NewHandlers(typingWriter, roomStore).Routes(mux, srv, acc)
	receipts.NewHandlers(receiptsWriter, roomStore, roomSvc, adSvc).Routes(mux, srv, acc)
	adSvc.Routes(mux, srv, acc)
	pushSvc.Routes(mux, srv, acc)
	pushSvc.NotificationsRoutes(mux, srv, acc)
	pushSvc.PushersRoutes(mux, srv, acc)
	tdSvc.Routes(mux, srv, acc)
	keysSvc.Routes(mux, srv, acc)
	federationInfoRoutes(mux, srv)
	if cfg.ExperimentalFeatures.MSC3814Enabled {
		dehydrated.NewService(db, acc, keysSvc, tdSvc).Routes(mux, srv)
	}
	presSvc.Routes(mux, srv, acc)
	filterStore.Routes(mux, srv, acc)
	syncSvc.Routes(mux, srv, acc)
	p.wireDirectoryAndSearch(mux, srv, acc, roomSvc, persister, rl(cfg.RCUserDirectory))
	infoRoutes(mux, srv, cfg, acc)
	p.wireReportsNoticesVoIP(mux, srv, acc, roomSvc, adSvc.Writer(), rl(cfg.RCReports))
	if err := p.wireFederation(mux, srv, key, roomStore, receiptsStore, typingReader, presSvc, rpcClient, rpcServer); err != nil {
		return err
	}
	p.wireFederationEDUs(federationEDUDeps{typing: typingWriter, receipts: receiptsWriter, presence: presWriter,
		toDevice: tdWriter, keys: keysSvc, rooms: roomStore, accounts: acc, roomSvc: roomSvc})
	p.wireInboundFederation(mux, srv, roomSvc, acc, keysSvc, p.remoteWriter)
	roomSvc.SetBackfiller(&backfill.Backfiller{ServerName: cfg.ServerName, DB: db, Client: p.federationClient, Keys: p.serverKeys,
		Writer: p.remoteWriter, Log: log.With("module", "federation.backfill")})
	p.wireFederationMembership(mux, srv, key, roomSvc, eventWriter, acc)
	p.wireOpenID(mux, srv, db, acc)
	if err := p.wireMedia(mux, srv, acc, lk); err != nil {
		return err
	}
	if err := p.wireAppservices(ctx, acc, roomSvc, roomStore, receiptsStore, typingReader, presSvc, tdSvc, mux, srv); err != nil {
		return err
	}
	if fleet {
		p.serveStatus(rpcServer)
		mux.Handle(replication.PathPrefix, rpcServer)
	}
	mux.Handle("GET /metrics", p.metrics.Handler())
	mux.OnUnrecognized = p.unrecognized
	// Profiles for finding slow paths under load (bench -pprof); only on
	// listeners that name the pprof resource (see resourceOf).
	mux.Handle("GET /debug/pprof/", http.HandlerFunc(pprof.Index))
	mux.Handle("GET /debug/pprof/profile", http.HandlerFunc(pprof.Profile))
	mux.Handle("GET /debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	mux.Handle("GET /debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
	p.handler = mux
	p.runners = append(p.runners, p.savePositions)
	return nil
}

// loadOrCreateSigningKey reads the server's ed25519 key, creating it on
// first start so a fresh demo needs no set-up.
func loadOrCreateSigningKey(path string, log *slog.Logger) (events.SigningKey, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := events.ParseSigningKeyFile(data)
		if err != nil {
			return events.SigningKey{}, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return events.SigningKey{}, fmt.Errorf("read signing key: %w", err)
	}
	k, err := events.GenerateSigningKey()
	if err != nil {
		return events.SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return events.SigningKey{}, fmt.Errorf("create signing key directory: %w", err)
	}
	if err := os.WriteFile(path, events.FormatSigningKeyFile(k), 0o600); err != nil {
		return events.SigningKey{}, fmt.Errorf("write signing key: %w", err)
	}
	log.Info("generated a new signing key", "path", path, "key_id", k.ID)
	return k, nil
}

// Handler is the process's full HTTP handler (all resources), for tests.
func (p *Process) Handler() http.Handler { return p.handler }

// resourceOf maps a request path to the listener resource that serves it.
func resourceOf(path string) string {
	switch {
	case strings.HasPrefix(path, "/_matrix/client"), strings.HasPrefix(path, "/_synapse/admin"),
		strings.HasPrefix(path, "/_synapse/client"):
		return "client"
	case path == "/_matrix/federation/v1/openid/userinfo":
		// Synapse's openid resource is this one endpoint.
		return "openid"
	case strings.HasPrefix(path, "/_matrix/federation"):
		return "federation"
	case strings.HasPrefix(path, "/_matrix/key"):
		return "keys"
	case strings.HasPrefix(path, "/_matrix/media"):
		return "media"
	case strings.HasPrefix(path, "/_synapse/replication"):
		return "replication"
	case path == "/metrics" || strings.HasPrefix(path, "/_synapse/metrics"):
		return "metrics"
	case strings.HasPrefix(path, "/debug/pprof/"):
		// Not under metrics: profiles cost CPU and expose memory, so they
		// are served only where explicitly asked for.
		return "pprof"
	case path == "/health":
		return "health"
	case strings.HasPrefix(path, "/.well-known/matrix/client"):
		return "client"
	}
	return ""
}

// listenerHandler serves only the resources a listener names; everything
// else is an unknown endpoint there. /health is on every listener, as in
// Synapse.
func (p *Process) listenerHandler(l config.Listener) http.Handler {
	role := p.cfg.WorkerRole()
	allowed := map[string]bool{"health": true}
	for _, r := range l.Resources {
		for _, n := range r.Names {
			allowed[n] = true
			if n == "federation" {
				allowed["keys"] = true   // Synapse's federation resource includes keys
				allowed["openid"] = true // and the OpenID userinfo endpoint
			}
		}
	}
	// Validate checked the list; an x_forwarded listener without one
	// trusts loopback peers only.
	trust, _ := forwarded.Parse(l.XForwardedTrustedProxies)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The path is classified once, for the metrics and for servable.
		class, className := metrics.Classify(r.Method, r.URL.Path)
		q := p.httpMetrics.Begin(class, className, r.Method)
		rec := &metrics.Recorder{ResponseWriter: w}
		r, endSpan := p.traceRequest(r, className)
		defer func() { q.End(rec.Code(), rec.Size); endSpan(rec.Code()) }()
		w = rec
		if l.XForwarded {
			// Rate limits and logs key on RemoteAddr: it becomes the client
			// the trusted proxies report, never what a client wrote itself.
			if client, ok := trust.Client(r); ok {
				r.RemoteAddr = net.JoinHostPort(client.String(), "0")
			}
		}
		resourceOK := allowed[resourceOf(r.URL.Path)] || (mediaListener(allowed) && mediaClass(class))
		if !resourceOK || !servable(role, class) {
			p.unrecognized(r, http.StatusNotFound)
			mxhttp.WriteError(w, mxhttp.Unrecognized(http.StatusNotFound, "Unrecognized request"))
			return
		}
		p.handler.ServeHTTP(w, r)
	})
}

// Listen opens every configured listener. Separate from Serve so callers
// (and tests) know the ports are bound before they connect.
func (p *Process) Listen() error {
	for _, l := range p.cfg.Listeners() {
		if l.Type != "" && l.Type != "http" {
			continue
		}
		h := p.listenerHandler(l)
		if l.XForwarded && l.XForwardedTrustedProxies == nil {
			// Stricter than Synapse, which believes anyone's header: say so,
			// for a proxy on another host whose header would be ignored.
			p.log.Info("x_forwarded listener believes X-Forwarded-For from loopback peers only; "+
				"list a proxy on another host in x_forwarded_trusted_proxies", "port", l.Port)
		}
		boundAny := false
		for _, addr := range l.Addresses() {
			ln, err := p.listen(l, addr)
			if err != nil {
				// "::" is dual-stack on Linux, so Synapse's default pair
				// ["::", "0.0.0.0"] collides on the second; as in Synapse,
				// that is fine when the first bound.
				if boundAny && strings.HasPrefix(addr, "0.0.0.0:") && errors.Is(err, syscall.EADDRINUSE) {
					continue
				}
				p.closeListeners()
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			if strings.HasPrefix(addr, "[::]:") {
				boundAny = true
			}
			// Slow or numerous clients are bounded per listener address
			// (http_limits): header and body deadlines, a connection cap.
			lim := p.cfg.HTTPLimits.Values()
			guard := httpguard.New(httpguard.Options{
				BodyTimeout: lim.RequestBodyTimeout, BodyMinRate: lim.RequestBodyMinRate,
				MaxConns: lim.MaxConnections, MaxPendingPerIP: pendingCap(l, lim), PlainHTTP: !l.TLS,
			}, p.log.With("listener", addr))
			ln = guard.Listener(ln)
			srv := &http.Server{
				Handler:           guard.Handler(h),
				ReadHeaderTimeout: lim.RequestHeaderTimeout,
				IdleTimeout:       lim.IdleTimeout,
				MaxHeaderBytes:    64 << 10,
				ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
				ConnState:         guard.ConnState,
				ConnContext:       guard.ConnContext,
			}
			p.mu.Lock()
			p.listeners = append(p.listeners, ln)
			p.servers = append(p.servers, srv)
			p.mu.Unlock()
			p.log.Info("listening", "addr", ln.Addr().String(), "resources", resourceNames(l), "tls", l.TLS,
				"x_forwarded", l.XForwarded)
		}
	}
	return nil
}

// pendingCap is http_limits.max_pending_connections_per_ip, except on
// x_forwarded listeners, where every connection has the proxy's address.
func pendingCap(l config.Listener, lim config.HTTPLimitValues) int {
	if l.XForwarded {
		return 0
	}
	return lim.MaxPendingConnectionsPerIP
}

// listen binds one address of l, behind TLS when l asks for it (with the
// certificate config.Load read).
func (p *Process) listen(l config.Listener, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil || !l.TLS {
		return ln, err
	}
	cert := p.cfg.TLSCertificate()
	if cert == nil {
		ln.Close()
		return nil, fmt.Errorf("listener on %s has tls: true but no certificate was loaded", addr)
	}
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}), nil
}

func resourceNames(l config.Listener) string {
	var names []string
	for _, r := range l.Resources {
		names = append(names, r.Names...)
	}
	return strings.Join(names, ",")
}

func (p *Process) closeListeners() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ln := range p.listeners {
		ln.Close()
	}
}

// Addrs lists the bound listener addresses.
func (p *Process) Addrs() []net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]net.Addr, len(p.listeners))
	for i, ln := range p.listeners {
		out[i] = ln.Addr()
	}
	return out
}

// Run serves until ctx ends, then shuts down in order: stop accepting,
// let requests finish (bounded), stop the modules, save stream positions,
// close the database.
func (p *Process) Run(ctx context.Context) error {
	errc := make(chan error, len(p.servers)+len(p.runners))
	for i, srv := range p.servers {
		go func(srv *http.Server, ln net.Listener) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", ln.Addr(), err)
			}
		}(srv, p.listeners[i])
	}
	// Modules outlive ctx: they stop only after the listeners drained and
	// the beforeModulesStop steps ran (which need the Redis link).
	modCtx, stopModules := context.WithCancel(context.WithoutCancel(ctx))
	var modules gosync.WaitGroup
	for _, run := range p.runners {
		modules.Add(1)
		go func() {
			defer modules.Done()
			if err := run(modCtx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- err
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	p.log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, srv := range p.servers {
		_ = srv.Shutdown(shutCtx)
	}
	for _, f := range p.beforeModulesStop {
		if err := f(shutCtx); err != nil {
			p.log.Warn("shutdown step failed", "err", err)
		}
	}
	stopModules()
	modules.Wait()
	for _, f := range p.onShutdown {
		if err := f(shutCtx); err != nil {
			p.log.Warn("shutdown step failed", "err", err)
		}
	}
	for _, w := range p.positions {
		if err := w.SavePosition(shutCtx); err != nil {
			p.log.Warn("could not save stream position", "err", err)
		}
	}
	if err := p.db.Close(); err != nil {
		p.log.Warn("close database", "err", err)
	}
	if err := p.tracer.Shutdown(shutCtx); err != nil {
		p.log.Warn("flush traces", "err", err)
	}
	return runErr
}

// savePositions persists the local writers' stream positions now and
// then, so other processes starting up learn them without scanning tables.
func (p *Process) savePositions(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := make([]int64, len(p.positions))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			for i, w := range p.positions {
				if pos := w.Position(); pos != last[i] {
					if err := w.SavePosition(ctx); err != nil {
						p.log.Warn("could not save stream position", "err", err)
						continue
					}
					last[i] = pos
				}
			}
		}
	}
}

// loadWriterPositions starts this process's view of other writers at the
// positions they last saved, so a process answering before its first
// replication handshake does not serve a stream from position 0. Saved
// positions lag but are never ahead of what is committed; replication
// brings them up to date.
func loadWriterPositions(ctx context.Context, db *storage.DB, reg *streams.Registry) error {
	rows, err := db.Reader().QueryContext(ctx, `SELECT stream_name, instance_name, stream_id FROM stream_positions`)
	if err != nil {
		return fmt.Errorf("load stream positions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, instance string
		var pos int64
		if err := rows.Scan(&name, &instance, &pos); err != nil {
			return fmt.Errorf("load stream positions: %w", err)
		}
		n := streams.Name(name)
		if !reg.Known(n) || instance == reg.Instance() {
			continue
		}
		if d, _ := reg.Def(n); d.Storage == streams.InMemory {
			continue
		}
		reg.Advance(n, instance, pos)
	}
	return rows.Err()
}

// instanceIDs returns the vector-token ids of every known instance,
// assigning ids to the given writers first. Several processes may start at
// once: an insert that loses a race is retried.
func instanceIDs(ctx context.Context, db *storage.DB, writers []string) (map[string]int, error) {
	for _, w := range writers {
		for attempt := 0; ; attempt++ {
			err := db.Tx(ctx, func(tx *sql.Tx) error {
				var id int
				err := tx.QueryRowContext(ctx, `SELECT instance_id FROM instance_ids WHERE instance_name = $1`, w).Scan(&id)
				if err == nil {
					return nil
				}
				if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
				_, err = tx.ExecContext(ctx, `INSERT INTO instance_ids (instance_id, instance_name)
					SELECT COALESCE(max(instance_id), 0) + 1, $1 FROM instance_ids`, w)
				return err
			})
			if err == nil {
				break
			}
			if !storage.IsUniqueViolation(err) || attempt >= 5 {
				return nil, fmt.Errorf("assign instance id to %s: %w", w, err)
			}
		}
	}
	rows, err := db.Reader().QueryContext(ctx, `SELECT instance_name, instance_id FROM instance_ids`)
	if err != nil {
		return nil, fmt.Errorf("load instance ids: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var name string
		var id int
		if err := rows.Scan(&name, &id); err != nil {
			return nil, err
		}
		out[name] = id
	}
	return out, rows.Err()
}

// servable applies the routing table (the class of the request, nil for
// paths outside it) to what a process answers. The main
// process and generic workers answer every endpoint Ganglion implements:
// no endpoint depends on state only main holds (writes to single-writer
// streams are forwarded to their writer), so a generic worker's answer is
// never wrong. Other roles (media, pusher, …) answer only their classes.
func servable(role string, class *routes.Class) bool {
	if role == config.RoleMain || role == config.RoleGenericWorker {
		return true
	}
	// As routes.Allowed: paths outside the table (replication, metrics,
	// /health) are left to the listener's resources.
	return class == nil || class.ServableBy(role)
}
