package presence

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// The presence writer's endpoints (Synapse's presence_set_state and
// bump_presence_active_time).
var (
	SetStateEndpoint   = replication.Endpoint{Name: "presence_set_state", PathArgs: []string{"user_id"}, Idempotent: true}
	BumpActiveEndpoint = replication.Endpoint{Name: "bump_presence_active_time", PathArgs: []string{"user_id"}}
)

type setStateBody struct {
	State     string `json:"state"`
	StatusMsg string `json:"status_msg"`
	SetStatus bool   `json:"set_status"`
}

type positionResult struct {
	Position int64 `json:"position"`
}

// Serve registers the writer's endpoints.
func Serve(srv *replication.Server, w Writer, position func() int64) {
	e := SetStateEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var b setStateBody
		if err := json.Unmarshal(req.Body, &b); err != nil {
			return nil, mxhttp.BadJSON("presence_set_state: %v", err)
		}
		pos, err := w.SetPresence(ctx, req.Args["user_id"], b.State, b.StatusMsg, b.SetStatus)
		if err != nil {
			return nil, err
		}
		return replication.WithPositions(positionResult{Position: pos}, replication.StreamPositions{streams.Presence: max(pos, position())}), nil
	}
	srv.Register(e)
	b := BumpActiveEndpoint
	b.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		return struct{}{}, w.BumpActive(ctx, req.Args["user_id"])
	}
	srv.Register(b)
}

// SyncTracker is the writer's record of which users sync on which other
// processes, fed by USER_SYNC and CLEAR_USER_SYNC: a user stays online
// while any process has a sync of theirs running.
type SyncTracker struct {
	w  Writer
	mu sync.Mutex
	by map[string]map[string]bool // process id → syncing users
}

func NewSyncTracker(w Writer) *SyncTracker {
	return &SyncTracker{w: w, by: map[string]map[string]bool{}}
}

// UserSync applies one USER_SYNC command.
func (t *SyncTracker) UserSync(ctx context.Context, c replication.UserSync) {
	t.mu.Lock()
	users := t.by[c.InstanceID]
	if users == nil {
		users = map[string]bool{}
		t.by[c.InstanceID] = users
	}
	was := users[c.UserID]
	if c.Active {
		users[c.UserID] = true
	} else {
		delete(users, c.UserID)
	}
	t.mu.Unlock()
	switch {
	case c.Active && !was:
		t.w.SyncStarted(c.UserID)
	case !c.Active && was:
		t.w.SyncEnded(c.UserID)
	}
}

// Clear ends every sync of a process that went away.
func (t *SyncTracker) Clear(ctx context.Context, processID string) {
	t.mu.Lock()
	users := t.by[processID]
	delete(t.by, processID)
	t.mu.Unlock()
	for u := range users {
		t.w.SyncEnded(u)
	}
}

// RemoteWriter is the presence Writer of processes that do not write the
// stream: state changes go to the writer over HTTP, and syncs are
// announced on the bus (USER_SYNC), counted here so a user with two syncs
// on this process is announced once and re-announced after a reconnect.
type RemoteWriter struct {
	base      context.Context // the process's lifetime; announcements outlive requests
	client    *replication.Client
	writer    string
	bus       *replication.Bus
	processID string
	log       interface {
		Warn(msg string, args ...any)
	}

	mu      sync.Mutex
	syncing map[string]int
	lastSet map[string]lastSet
}

func NewRemoteWriter(base context.Context, client *replication.Client, writer string, bus *replication.Bus, processID string, log interface {
	Warn(msg string, args ...any)
}) *RemoteWriter {
	return &RemoteWriter{base: base, client: client, writer: writer, bus: bus, processID: processID, log: log, syncing: map[string]int{}, lastSet: map[string]lastSet{}}
}

var _ Writer = (*RemoteWriter)(nil)

// resendAfter bounds how long a sync's unchanged set_presence is not
// forwarded: every /sync would otherwise cost an HTTP call to the writer,
// while the writer only needs to hear "still online" now and then (its
// idle timer is minutes long, and USER_SYNC already tells it who syncs).
const resendAfter = 30 * time.Second

// SetPresence implements Writer. An explicit change always goes to the
// writer: only the writer knows the user's state, and another process (or
// the writer's timers) may have changed it since this one last forwarded
// anything.
func (w *RemoteWriter) SetPresence(ctx context.Context, userID, state, statusMsg string, setStatus bool) (int64, error) {
	var out positionResult
	err := w.client.Call(ctx, w.writer, SetStateEndpoint, map[string]string{"user_id": userID},
		setStateBody{State: state, StatusMsg: statusMsg, SetStatus: setStatus}, &out)
	w.remember(userID, state, err == nil)
	return out.Position, err
}

// SyncPresence implements Writer: a sync's set_presence is forwarded
// unless this process forwarded the same state within resendAfter and no
// presence row of the user has been replicated since (Forget).
func (w *RemoteWriter) SyncPresence(ctx context.Context, userID, state string) error {
	w.mu.Lock()
	last, ok := w.lastSet[userID]
	w.mu.Unlock()
	if ok && last.state == state && time.Since(last.at) < resendAfter {
		return nil
	}
	_, err := w.SetPresence(ctx, userID, state, "", false)
	return err
}

// remember records the state last forwarded for a user (or forgets it
// after a failure, so the next sync tries again).
func (w *RemoteWriter) remember(userID, state string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ok {
		w.lastSet[userID] = lastSet{state: state, at: time.Now()}
	} else {
		delete(w.lastSet, userID)
	}
	if len(w.lastSet) > 100000 {
		clear(w.lastSet)
	}
}

// Forget drops what this process last forwarded for a user. The presence
// source calls it for every replicated row of the user: whatever changed
// their presence (this process, another one, the writer's timers), the
// next sync's set_presence must reach the writer rather than be skipped
// on the strength of a stale copy. (A row caused by this process's own
// call is applied before the call returns, so before remember runs.)
func (w *RemoteWriter) Forget(userID string) {
	w.mu.Lock()
	delete(w.lastSet, userID)
	w.mu.Unlock()
}

type lastSet struct {
	state string
	at    time.Time
}

// BumpActive implements Writer.
func (w *RemoteWriter) BumpActive(ctx context.Context, userID string) error {
	return w.client.Call(ctx, w.writer, BumpActiveEndpoint, map[string]string{"user_id": userID}, struct{}{}, nil,
		replication.WithoutTimeoutRetry())
}

func (w *RemoteWriter) announce(userID string, active bool) {
	ctx, cancel := context.WithTimeout(w.base, 5*time.Second)
	defer cancel()
	c := replication.UserSync{InstanceID: w.processID, UserID: userID, Active: active, LastSyncMS: time.Now().UnixMilli()}
	if err := w.bus.Publish(ctx, c); err != nil {
		// The reconnect handshake re-announces everyone still syncing.
		w.log.Warn("could not announce user sync", "user_id", userID, "err", err)
	}
}

// SyncStarted implements Writer.
func (w *RemoteWriter) SyncStarted(userID string) {
	w.mu.Lock()
	w.syncing[userID]++
	first := w.syncing[userID] == 1
	w.mu.Unlock()
	if first {
		w.announce(userID, true)
	}
}

// SyncEnded implements Writer.
func (w *RemoteWriter) SyncEnded(userID string) {
	w.mu.Lock()
	w.syncing[userID]--
	last := w.syncing[userID] <= 0
	if last {
		delete(w.syncing, userID)
	}
	w.mu.Unlock()
	if last {
		w.announce(userID, false)
	}
}

// Syncing lists the USER_SYNC commands that re-announce this process's
// syncing users after a reconnect.
func (w *RemoteWriter) Syncing() []replication.UserSync {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]replication.UserSync, 0, len(w.syncing))
	now := time.Now().UnixMilli()
	for u := range w.syncing {
		out = append(out, replication.UserSync{InstanceID: w.processID, UserID: u, Active: true, LastSyncMS: now})
	}
	return out
}
