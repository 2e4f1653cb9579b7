package sync

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/config"
	"ganglion/internal/filters"
	"ganglion/internal/mxhttp"
	"ganglion/internal/presence"
	"ganglion/internal/rooms"
	"ganglion/internal/streams"
)

// Deps are the sources sync reads.
type Deps struct {
	Rooms       *rooms.Service
	Registry    *streams.Registry
	Filters     *filters.Store
	Typing      TypingReader
	Receipts    ReceiptsReader
	AccountData AccountDataReader
	// PushRules adds m.push_rules to the global account data (nil: none).
	PushRules PushRulesReader
	// Notifications gives joined rooms their unread counts (nil: zero).
	Notifications NotificationCounter
	ToDevice      ToDeviceReader
	Presence      PresenceReader
	// PresenceWriter learns about syncing users and set_presence.
	PresenceWriter presence.Writer
	// Keys is optional (nil: no device lists or key counts).
	Keys KeysReader
}

// Service serves sync for one process.
type Service struct {
	Deps
	store *rooms.Store
	log   *slog.Logger
	lazy  *lazyCache
	// ignored caches ignored-user lists between a user's syncs.
	ignored *ignoredCache
	// maxTimeout bounds a long-poll whatever the client asks.
	maxTimeout time.Duration
	// catchUpWait bounds the wait for replication when a client's token
	// is ahead of this process. Replication normally closes such a gap in
	// milliseconds; when it does not (the writer that got ahead died), the
	// client gets an empty answer quickly and comes back, rather than
	// hanging on a writer that is down.
	catchUpWait time.Duration
	// metrics are the long-poll series (nil without RegisterMetrics).
	metrics *syncMetrics
}

func NewService(d Deps, log *slog.Logger) *Service {
	return &Service{Deps: d, store: d.Rooms.Store(), log: log, lazy: newLazyCache(10000), ignored: newIgnoredCache(10000), maxTimeout: 5 * time.Minute, catchUpWait: 3 * time.Second}
}

// Params are /sync's query parameters.
type Params struct {
	Since       string
	Timeout     time.Duration
	FullState   bool
	SetPresence string
	Filter      string
}

// Sync answers one /sync request.
func (s *Service) Sync(ctx context.Context, req *accounts.Requester, p Params) (*Response, error) {
	r := &request{userID: req.UserID, deviceID: req.DeviceID, fullState: p.FullState,
		fmtr: s.Rooms.SyncFormatter(req.UserID, req.DeviceID), persisterOf: s.persisterOf}
	var err error
	if r.filter, err = s.Filters.Resolve(ctx, req.UserID, p.Filter); err != nil {
		return nil, err
	}
	if p.Since != "" {
		t, err := s.Registry.ParseToken(p.Since)
		if err != nil {
			return nil, mxhttp.InvalidParam("Invalid since token: %v", err)
		}
		r.since = &t
	}
	switch p.SetPresence {
	case "", "online", "unavailable", "offline":
	default:
		return nil, mxhttp.InvalidParam("set_presence must be online, unavailable or offline")
	}
	if s.PresenceWriter != nil {
		if p.SetPresence != "offline" {
			state := p.SetPresence
			if state == "" {
				state = "online"
			}
			if err := s.PresenceWriter.SyncPresence(ctx, req.UserID, state); err != nil {
				s.log.Warn("could not update presence from sync", "user_id", req.UserID, "err", err)
			}
		}
		s.PresenceWriter.SyncStarted(req.UserID)
		defer s.PresenceWriter.SyncEnded(req.UserID)
	}
	if r.since == nil {
		s.lazy.reset(req.UserID, req.DeviceID)
	} else {
		s.lazy.ack(req.UserID, req.DeviceID, p.Since)
	}
	if r.since != nil && req.DeviceID != "" {
		// The client presenting since proves it received every to-device
		// message up to since: delete them (exactly-once delivery).
		if err := s.ToDevice.Ack(ctx, req.UserID, req.DeviceID, r.since.ToDevice); err != nil {
			return nil, err
		}
	}

	if r.since != nil {
		if now := s.Registry.CurrentToken(); r.since.Ahead(now) {
			// The token came from a process further ahead (or from before
			// a restart of an in-memory writer). Wait, bounded, for
			// replication to catch up rather than answer from the past.
			wctx, cancel := context.WithTimeout(ctx, s.catchUpWait)
			err := s.Registry.WaitForToken(wctx, *r.since)
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("sync token ahead of this process; answering empty", "user_id", req.UserID, "since", p.Since, "now", s.Registry.FormatToken(now))
				resp := newResponse()
				resp.NextBatch = p.Since
				return resp, nil
			}
		}
	}
	timeout := min(p.Timeout, s.maxTimeout)
	var deadline <-chan time.Time
	if r.since != nil && timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	var listenRooms []string
	if r.since != nil && timeout > 0 {
		// Which rooms to listen on: position-bounded like the rest of the
		// sync, so the cached memberships serve.
		ms, err := s.store.SyncMemberships(ctx, req.UserID)
		if err != nil {
			return nil, err
		}
		for roomID, m := range ms {
			if m.Membership == "join" {
				listenRooms = append(listenRooms, roomID)
			}
		}
	}
	for {
		// Listen before reading positions: a write that lands between the
		// read and the wait still wakes us.
		var l *streams.Listener
		if deadline != nil {
			keys := make([]string, 0, len(listenRooms)+1)
			keys = append(keys, streams.UserKey(req.UserID))
			for _, id := range listenRooms {
				keys = append(keys, streams.RoomKey(id))
			}
			l = s.Registry.Notifier().Listen(keys...)
		}
		r.now = s.Registry.CurrentToken()
		if r.since != nil && r.since.Typing > r.now.Typing {
			// The typing writer restarted (its positions reset); the client's
			// typing position is meaningless now.
			r.since.Typing = 0
		}
		var resp *Response
		if deadline == nil || r.fullState || r.now.Ahead(*r.since) {
			var err error
			resp, err = s.compute(ctx, r)
			if err != nil || deadline == nil || !resp.empty() {
				if l != nil {
					l.Close()
				}
				return resp, err
			}
			listenRooms = r.joined
		}
		// else no stream moved past the client's token, so the response
		// would be empty: wait without computing it. This is every
		// long-poll's first round after the previous one returned.
		s.metrics.wait()
		select {
		case <-l.C:
			s.metrics.woke(true, false)
			l.Close()
		case <-deadline:
			s.metrics.woke(false, true)
			l.Close()
			if resp == nil {
				resp = newResponse()
				resp.NextBatch = s.Registry.FormatToken(r.now)
			}
			return resp, nil
		case <-ctx.Done():
			s.metrics.woke(false, false)
			l.Close()
			return nil, ctx.Err()
		}
	}
}

// Routes registers /sync and the legacy endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("GET", "/sync", srv.Handle(acc.Auth(s.handleSync)))
	mux.HandleClient("GET", "/events", srv.Handle(acc.Auth(s.handleEvents)))
	mux.HandleClient("GET", "/initialSync", srv.Handle(acc.Auth(s.handleInitialSync)))
	mux.HandleClient("GET", "/rooms/{roomId}/initialSync", srv.Handle(acc.Auth(s.handleRoomInitialSync)))
}

func parseTimeout(q string) (time.Duration, error) {
	if q == "" {
		return 0, nil
	}
	ms, err := strconv.ParseInt(q, 10, 64)
	if err != nil || ms < 0 {
		return 0, mxhttp.InvalidParam("timeout must be a non-negative integer (milliseconds)")
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func (s *Service) handleSync(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		return err
	}
	var full bool
	switch q.Get("full_state") {
	case "", "false":
	case "true":
		full = true
	default:
		return mxhttp.InvalidParam("full_state must be true or false")
	}
	resp, err := s.Sync(r.Context(), req, Params{Since: q.Get("since"), Timeout: timeout, FullState: full,
		SetPresence: q.Get("set_presence"), Filter: q.Get("filter")})
	if err != nil {
		if r.Context().Err() != nil {
			return nil // the client went away; nothing to answer
		}
		return fmt.Errorf("sync for %s: %w", req.UserID, err)
	}
	return mxhttp.WriteJSON(w, 200, resp)
}

// persisterOf names the events writer that owns a room.
func (s *Service) persisterOf(roomID string) string {
	return config.ShardFor(s.Registry.Writers(streams.Events), roomID)
}
