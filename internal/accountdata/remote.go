package accountdata

import (
	"context"
	"encoding/json"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// The account data writer's endpoints (Synapse's add_user_account_data,
// add_room_account_data, add_tag, remove_tag, folded into three).
var (
	PutEndpoint       = replication.Endpoint{Name: "account_data_put", PathArgs: []string{"user_id"}, Idempotent: true}
	PutTagEndpoint    = replication.Endpoint{Name: "add_tag", PathArgs: []string{"user_id"}, Idempotent: true}
	RemoveTagEndpoint = replication.Endpoint{Name: "remove_tag", PathArgs: []string{"user_id"}, Idempotent: true}
)

type writeBody struct {
	RoomID  string          `json:"room_id"`
	Type    string          `json:"type,omitempty"`
	Tag     string          `json:"tag,omitempty"`
	Content json.RawMessage `json:"content,omitempty"`
}

type positionResult struct {
	Position int64 `json:"position"`
}

// Serve registers the writer's endpoints.
func Serve(srv *replication.Server, w *LocalWriter) {
	reg := func(e replication.Endpoint, do func(ctx context.Context, user string, b writeBody) (int64, error)) {
		e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
			var b writeBody
			if err := json.Unmarshal(req.Body, &b); err != nil {
				return nil, mxhttp.BadJSON("%s: %v", e.Name, err)
			}
			pos, err := do(ctx, req.Args["user_id"], b)
			if err != nil {
				return nil, err
			}
			return replication.WithPositions(positionResult{Position: pos}, replication.StreamPositions{streams.AccountData: max(pos, w.Position())}), nil
		}
		srv.Register(e)
	}
	reg(PutEndpoint, func(ctx context.Context, user string, b writeBody) (int64, error) {
		return w.Put(ctx, user, b.RoomID, b.Type, b.Content)
	})
	reg(PutTagEndpoint, func(ctx context.Context, user string, b writeBody) (int64, error) {
		return w.PutTag(ctx, user, b.RoomID, b.Tag, b.Content)
	})
	reg(RemoveTagEndpoint, func(ctx context.Context, user string, b writeBody) (int64, error) {
		return w.RemoveTag(ctx, user, b.RoomID, b.Tag)
	})
}

// RemoteWriter forwards account data writes to the writer process.
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

func (w *RemoteWriter) call(ctx context.Context, e replication.Endpoint, user string, b writeBody) (int64, error) {
	var out positionResult
	err := w.client.Call(ctx, w.writer, e, map[string]string{"user_id": user}, b, &out)
	return out.Position, err
}

// Put implements Writer.
func (w *RemoteWriter) Put(ctx context.Context, userID, roomID, eventType string, content json.RawMessage) (int64, error) {
	return w.call(ctx, PutEndpoint, userID, writeBody{RoomID: roomID, Type: eventType, Content: content})
}

// PutTag implements Writer.
func (w *RemoteWriter) PutTag(ctx context.Context, userID, roomID, tag string, content json.RawMessage) (int64, error) {
	return w.call(ctx, PutTagEndpoint, userID, writeBody{RoomID: roomID, Tag: tag, Content: content})
}

// RemoveTag implements Writer.
func (w *RemoteWriter) RemoveTag(ctx context.Context, userID, roomID, tag string) (int64, error) {
	return w.call(ctx, RemoveTagEndpoint, userID, writeBody{RoomID: roomID, Tag: tag})
}
