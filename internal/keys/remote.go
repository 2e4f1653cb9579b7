package keys

import (
	"context"
	"encoding/json"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// UpdateEndpoint forwards a device list update to the device_lists writer
// that owns the user. A retried call may announce the change twice, which
// costs clients one extra key query and loses nothing.
var UpdateEndpoint = replication.Endpoint{Name: "device_list_update", PathArgs: []string{"user_id"}, Idempotent: true}

// Serve registers the writer's endpoint.
func Serve(srv *replication.Server, w *LocalWriter) {
	e := UpdateEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var u Update
		if err := json.Unmarshal(req.Body, &u); err != nil {
			return nil, mxhttp.BadJSON("device_list_update: %v", err)
		}
		u.UserID = req.Args["user_id"]
		if err := w.Update(ctx, u); err != nil {
			return nil, err
		}
		return replication.WithPositions(struct{}{}, replication.StreamPositions{streams.DeviceLists: w.Position()}), nil
	}
	srv.Register(e)
}

// RemoteWriter forwards updates to one device_lists writer.
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

// Update implements Writer.
func (w *RemoteWriter) Update(ctx context.Context, u Update) error {
	return w.client.Call(ctx, w.writer, UpdateEndpoint, map[string]string{"user_id": u.UserID}, u, nil)
}
