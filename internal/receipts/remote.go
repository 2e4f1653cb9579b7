package receipts

import (
	"context"
	"encoding/json"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// SetReceiptEndpoint forwards a receipt to a receipts writer.
var SetReceiptEndpoint = replication.Endpoint{Name: "receipts_set", PathArgs: []string{"room_id"}, Idempotent: true}

type positionResult struct {
	Position int64 `json:"position"`
}

// Serve registers the writer's endpoint.
func Serve(srv *replication.Server, s *Service) {
	e := SetReceiptEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var r Receipt
		if err := json.Unmarshal(req.Body, &r); err != nil {
			return nil, mxhttp.BadJSON("receipts_set: %v", err)
		}
		r.RoomID = req.Args["room_id"]
		pos, err := s.SetReceipt(ctx, r)
		if err != nil {
			return nil, err
		}
		return replication.WithPositions(positionResult{Position: pos}, replication.StreamPositions{streams.Receipts: max(pos, s.Position())}), nil
	}
	srv.Register(e)
}

// RemoteWriter forwards receipts to the writer process (the first
// configured receipts writer: receipts of one room must not race between
// writers, and one writer is the common setup).
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

// SetReceipt implements Writer.
func (w *RemoteWriter) SetReceipt(ctx context.Context, r Receipt) (int64, error) {
	var out positionResult
	err := w.client.Call(ctx, w.writer, SetReceiptEndpoint, map[string]string{"room_id": r.RoomID}, r, &out)
	return out.Position, err
}
