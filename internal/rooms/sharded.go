package rooms

import (
	"context"
	"encoding/json"
	"fmt"

	"ganglion/internal/config"
	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// SendEventsEndpoint is how an event creator hands drafts to the room's
// persister in another process (Synapse's send_events). Idempotent: a
// retried call returns the first call's events instead of sending twice.
var SendEventsEndpoint = replication.Endpoint{Name: "send_events", PathArgs: []string{"room_id"}, Idempotent: true, WaitForStreams: true}

type sendEventsBody struct {
	Drafts []Draft `json:"drafts"`
}

type sendEventsResult struct {
	Events []Persisted `json:"events"`
}

// ServeSendEvents registers the persister's side of send_events.
func ServeSendEvents(srv *replication.Server, p *Persister) {
	e := SendEventsEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var body sendEventsBody
		if err := json.Unmarshal(req.Body, &body); err != nil {
			return nil, mxhttp.BadJSON("send_events: %v", err)
		}
		res, err := p.SendEvents(ctx, req.Args["room_id"], body.Drafts)
		if err != nil {
			return nil, err
		}
		var pos int64
		for _, r := range res {
			pos = max(pos, r.StreamPos)
		}
		// The caller waits until it has seen our position reach these
		// events before answering its client (read-your-writes).
		return replication.WithPositions(sendEventsResult{Events: res}, replication.StreamPositions{streams.Events: max(pos, p.Position())}), nil
	}
	srv.Register(e)
}

// ShardedWriter is the EventWriter of an event creator in a fleet: each
// room's drafts go to the one persister that owns the room
// (SHA-256(room_id) mod the number of stream_writers.events), locally when
// that is this process.
type ShardedWriter struct {
	self    string
	writers []string
	local   *Persister // nil when this process persists no rooms
	client  *replication.Client
}

var _ EventWriter = (*ShardedWriter)(nil)

// NewShardedWriter routes over writers (configured order matters).
func NewShardedWriter(self string, writers []string, local *Persister, client *replication.Client) *ShardedWriter {
	return &ShardedWriter{self: self, writers: writers, local: local, client: client}
}

// PersisterFor names the instance that persists a room's events.
func (w *ShardedWriter) PersisterFor(roomID string) string { return config.ShardFor(w.writers, roomID) }

// SendEvents implements EventWriter.
func (w *ShardedWriter) SendEvents(ctx context.Context, roomID string, drafts []Draft) ([]Persisted, error) {
	target := w.PersisterFor(roomID)
	if target == w.self {
		if w.local == nil {
			return nil, fmt.Errorf("room %s belongs to this instance, which has no persister", roomID)
		}
		return w.local.SendEvents(ctx, roomID, drafts)
	}
	var out sendEventsResult
	if err := w.client.Call(ctx, target, SendEventsEndpoint, map[string]string{"room_id": roomID},
		sendEventsBody{Drafts: drafts}, &out); err != nil {
		return nil, err
	}
	if len(out.Events) != len(drafts) {
		return nil, fmt.Errorf("send_events to %s: %d results for %d drafts", target, len(out.Events), len(drafts))
	}
	return out.Events, nil
}

// PersistRemoteEndpoint hands remote events to the room's persister.
// Idempotent: events already stored come back as duplicates.
var PersistRemoteEndpoint = replication.Endpoint{Name: "persist_remote", PathArgs: []string{"room_id"}, Idempotent: true, WaitForStreams: true}

type persistRemoteResult struct {
	Results []RemoteResult `json:"results"`
}

// ServePersistRemote registers the persister's side of persist_remote.
func ServePersistRemote(srv *replication.Server, p *Persister) {
	e := PersistRemoteEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var batch RemoteBatch
		if err := json.Unmarshal(req.Body, &batch); err != nil {
			return nil, mxhttp.BadJSON("persist_remote: %v", err)
		}
		res, err := p.PersistRemote(ctx, req.Args["room_id"], batch)
		if err != nil {
			return nil, err
		}
		pos := p.Position()
		for _, r := range res {
			pos = max(pos, r.StreamPos)
		}
		return replication.WithPositions(persistRemoteResult{Results: res}, replication.StreamPositions{streams.Events: pos}), nil
	}
	srv.Register(e)
}

var _ RemoteWriter = (*ShardedWriter)(nil)

// PersistRemote implements RemoteWriter: the batch goes to the room's
// persister.
func (w *ShardedWriter) PersistRemote(ctx context.Context, roomID string, batch RemoteBatch) ([]RemoteResult, error) {
	target := w.PersisterFor(roomID)
	if target == w.self {
		if w.local == nil {
			return nil, fmt.Errorf("room %s belongs to this instance, which has no persister", roomID)
		}
		return w.local.PersistRemote(ctx, roomID, batch)
	}
	var out persistRemoteResult
	if err := w.client.Call(ctx, target, PersistRemoteEndpoint, map[string]string{"room_id": roomID}, batch, &out); err != nil {
		return nil, err
	}
	return out.Results, nil
}
