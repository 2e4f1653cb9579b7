package push

import (
	"context"
	"encoding/json"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// ApplyEndpoint is the push_rules writer's one endpoint: every change is an
// Op (Synapse has one endpoint per operation; one body type is enough).
var ApplyEndpoint = replication.Endpoint{Name: "push_rules_apply", PathArgs: []string{"user_id"}, Idempotent: true}

type positionResult struct {
	Position int64 `json:"position"`
}

// Serve registers the writer's endpoint.
func Serve(srv *replication.Server, w *LocalWriter) {
	e := ApplyEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var op Op
		if err := json.Unmarshal(req.Body, &op); err != nil {
			return nil, mxhttp.BadJSON("%s: %v", e.Name, err)
		}
		pos, err := w.Apply(ctx, req.Args["user_id"], op)
		if err != nil {
			return nil, err
		}
		return replication.WithPositions(positionResult{Position: pos}, replication.StreamPositions{streams.PushRules: max(pos, w.Position())}), nil
	}
	srv.Register(e)
}

// RemoteWriter forwards push rule changes to the writer process.
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

// Apply implements Writer.
func (w *RemoteWriter) Apply(ctx context.Context, userID string, op Op) (int64, error) {
	var out positionResult
	err := w.client.Call(ctx, w.writer, ApplyEndpoint, map[string]string{"user_id": userID}, op, &out)
	return out.Position, err
}
