package typing

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/streams"
)

// SetTypingEndpoint forwards a typing change to the typing writer. Synapse
// has no such endpoint (its router must send /typing to the writer); with
// it any worker can serve /typing.
var SetTypingEndpoint = replication.Endpoint{Name: "typing", PathArgs: []string{"room_id", "user_id"}}

// StreamUpdatesEndpoint is Synapse's get_repl_stream_updates: rows of an
// in-memory stream fetched from its writer after a gap.
var StreamUpdatesEndpoint = replication.Endpoint{Name: "get_repl_stream_updates", Method: "GET", PathArgs: []string{"stream"}}

type setTypingBody struct {
	Typing    bool  `json:"typing"`
	TimeoutMS int64 `json:"timeout_ms"`
}

// Serve registers the writer's endpoints.
func Serve(srv *replication.Server, s *Service) {
	e := SetTypingEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		var b setTypingBody
		if err := json.Unmarshal(req.Body, &b); err != nil {
			return nil, mxhttp.BadJSON("typing: %v", err)
		}
		if err := s.SetTyping(ctx, req.Args["room_id"], req.Args["user_id"], b.Typing, time.Duration(b.TimeoutMS)*time.Millisecond); err != nil {
			return nil, err
		}
		return replication.WithPositions(struct{}{}, replication.StreamPositions{streams.Typing: s.Position()}), nil
	}
	srv.Register(e)
}

// ServeStreamUpdates registers get_repl_stream_updates for the in-memory
// streams this process writes.
func ServeStreamUpdates(srv *replication.Server, reg *streams.Registry) {
	e := StreamUpdatesEndpoint
	e.Handle = func(ctx context.Context, req *replication.Request) (any, error) {
		name := streams.Name(req.Args["stream"])
		if !reg.Known(name) || !reg.IsWriter(name) || reg.Source(name) == nil {
			return nil, mxhttp.NotFound("not a writer of stream %s", name)
		}
		from, err1 := strconv.ParseInt(req.Query.Get("from_token"), 10, 64)
		to, err2 := strconv.ParseInt(req.Query.Get("upto_token"), 10, 64)
		if err1 != nil || err2 != nil {
			return nil, mxhttp.InvalidParam("from_token and upto_token must be integers")
		}
		const limit = 100
		rows, err := reg.Source(name).Rows(ctx, reg.Instance(), from, to, limit)
		if err != nil {
			return nil, err
		}
		updates := make([][2]any, len(rows))
		upto := to
		for i, r := range rows {
			updates[i] = [2]any{r.Token, r.Data}
		}
		if len(rows) == limit {
			upto = rows[len(rows)-1].Token
		}
		// current_token lets readers check a position heard on Redis
		// against the writer itself (FetchPosition).
		return map[string]any{"updates": updates, "upto_token": upto, "limited": len(rows) == limit,
			"current_token": reg.WriterPosition(name, reg.Instance())}, nil
	}
	srv.Register(e)
}

// FetchPosition asks a writer of an in-memory stream for its current
// position: the replicator's bound for positions of that stream heard on
// Redis, which only the writer can vouch for. The empty range (0, 0] keeps
// the answer to the position alone.
func FetchPosition(ctx context.Context, client *replication.Client, stream streams.Name, writer string) (int64, error) {
	var out struct {
		Current *int64 `json:"current_token"`
	}
	q := url.Values{"from_token": {"0"}, "upto_token": {"0"}}
	if err := client.Call(ctx, writer, StreamUpdatesEndpoint, map[string]string{"stream": string(stream)}, nil, &out,
		replication.WithQuery(q)); err != nil {
		return 0, fmt.Errorf("ask %s for its %s position: %w", writer, stream, err)
	}
	if out.Current == nil {
		return 0, fmt.Errorf("%s did not report its %s position", writer, stream)
	}
	return *out.Current, nil
}

// FetchUpdates asks a writer for rows of an in-memory stream: the Replica's
// fetch function.
func FetchUpdates(client *replication.Client, stream streams.Name, writer string) func(ctx context.Context, from, to int64, limit int) ([]streams.Row, error) {
	return func(ctx context.Context, from, to int64, limit int) ([]streams.Row, error) {
		var out struct {
			Raw [][2]json.RawMessage `json:"updates"`
		}
		q := url.Values{"from_token": {strconv.FormatInt(from, 10)}, "upto_token": {strconv.FormatInt(to, 10)}}
		if err := client.Call(ctx, writer, StreamUpdatesEndpoint, map[string]string{"stream": string(stream)}, nil, &out,
			replication.WithQuery(q)); err != nil {
			return nil, err
		}
		rows := make([]streams.Row, 0, len(out.Raw))
		for _, u := range out.Raw {
			var tok int64
			if err := json.Unmarshal(u[0], &tok); err != nil {
				return nil, err
			}
			rows = append(rows, streams.Row{Token: tok, Data: u[1]})
		}
		return rows, nil
	}
}

// RemoteWriter forwards typing changes to the writer process.
type RemoteWriter struct {
	client *replication.Client
	writer string
}

func NewRemoteWriter(client *replication.Client, writer string) *RemoteWriter {
	return &RemoteWriter{client: client, writer: writer}
}

var _ Writer = (*RemoteWriter)(nil)

// SetTyping implements Writer.
func (w *RemoteWriter) SetTyping(ctx context.Context, roomID, userID string, typing bool, timeout time.Duration) error {
	return w.client.Call(ctx, w.writer, SetTypingEndpoint, map[string]string{"room_id": roomID, "user_id": userID},
		setTypingBody{Typing: typing, TimeoutMS: timeout.Milliseconds()}, nil)
}
