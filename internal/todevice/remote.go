package todevice

import (
	"context"
	"encoding/json"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// SendEndpoint forwards a to-device send to the to_device writer. The
// writer is idempotent per (sender, device, txn id) already; the
// replication txn id covers retries of the call itself.
var SendEndpoint = replication.Endpoint{Name: "send_to_device", PathArgs: []string{"user_id"}, Idempotent: true}

type sendBody struct {
	SenderDevice string                                `json:"sender_device"`
	TxnID        string                                `json:"txn_id"`
	Type         string                                `json:"type"`
	Messages     map[string]map[string]json.RawMessage `json:"messages"`
}

// Serve registers the writer's endpoint.
func Serve(srv *replication.Server, w *LocalWriter) {
	e := SendEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var b sendBody
		if err := json.Unmarshal(req.Body, &b); err != nil {
			return nil, mxhttp.BadJSON("send_to_device: %v", err)
		}
		if err := w.Send(ctx, req.Args["user_id"], b.SenderDevice, b.TxnID, b.Type, b.Messages); err != nil {
			return nil, err
		}
		return replication.WithPositions(struct{}{}, replication.StreamPositions{streams.ToDevice: w.Position()}), nil
	}
	srv.Register(e)
}

// RemoteWriter forwards sends to the writer process.
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

// Send implements Writer.
func (w *RemoteWriter) Send(ctx context.Context, sender, senderDevice, txnID, eventType string, messages map[string]map[string]json.RawMessage) error {
	return w.client.Call(ctx, w.writer, SendEndpoint, map[string]string{"user_id": sender},
		sendBody{SenderDevice: senderDevice, TxnID: txnID, Type: eventType, Messages: messages}, nil)
}
