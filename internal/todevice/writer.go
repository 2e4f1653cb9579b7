// Package todevice owns send-to-device messaging: the per-device inboxes,
// the to_device stream they are written to, delivery to /sync with
// exactly-once acknowledgement, and PUT /sendToDevice.
//
// Sends go through a Writer: the LocalWriter when this process is the
// stream's writer (stream_writers.to_device), later an HTTP-replication
// client forwarding to it. Delivery and acknowledgement (Service) read and
// delete inbox rows directly on any process: they create no stream rows.
package todevice

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"ganglion/internal/storage"
	"ganglion/internal/streams"
)

// Writer sends to-device messages.
type Writer interface {
	// Send delivers messages[user][device] (device "*" = every current
	// device of the user) into the recipients' inboxes. It is idempotent
	// per (sender, senderDevice, txnID): a retried transaction does
	// nothing. Unknown local users and devices are skipped, as the spec
	// asks; messages to remote users are queued, one m.direct_to_device
	// EDU per destination server, for the federation sender.
	Send(ctx context.Context, sender, senderDevice, txnID, eventType string, messages map[string]map[string]json.RawMessage) error
}

var _ Writer = (*LocalWriter)(nil)

// LocalWriter writes to-device messages on the to_device stream's writer.
//
// One stream id per send: every inbox row a request writes shares it. A
// device gets at most one message per request (an explicit device entry
// wins over "*"), so a device's rows have distinct ids and "deliver up to
// id N" is exact. Per-row ids would buy nothing and cost a sequence call
// per recipient.
type LocalWriter struct {
	tw         *streams.TableWriter
	floor      int64 // the sequence's value at start-up (see NewLocalWriter)
	serverName string
	log        *slog.Logger
	now        func() time.Time
}

// NewLocalWriter resumes the to_device stream. serverName decides which
// recipients are local.
//
// Acknowledged rows are deleted, so after a crash (no saved position) the
// table's maximum can be below ids that clients already hold in sync
// tokens, and a position that went backwards would make their next sync
// wait for the stream to "catch up". The stream has a single writer and
// nothing of ours is in flight while we start, so every id the sequence
// has handed out is finished: its current value is a safe position.
func NewLocalWriter(ctx context.Context, db *storage.DB, reg *streams.Registry, serverName string, log *slog.Logger) (*LocalWriter, error) {
	tw, err := streams.NewTableWriter(ctx, db, reg, streams.ToDevice, "device_inbox", "stream_id", "")
	if err != nil {
		return nil, err
	}
	seq, err := db.CurrentStreamSeq(ctx, string(streams.ToDevice))
	if err != nil {
		return nil, fmt.Errorf("resume to_device stream: %w", err)
	}
	reg.Advance(streams.ToDevice, reg.Instance(), seq)
	return &LocalWriter{tw: tw, floor: seq, serverName: serverName, log: log, now: time.Now}, nil
}

// Position is the writer's committed position.
func (w *LocalWriter) Position() int64 { return max(w.tw.Position(), w.floor) }

// SavePosition records the position in stream_positions (at shutdown).
func (w *LocalWriter) SavePosition(ctx context.Context) error { return w.tw.SavePosition(ctx) }

// Send implements Writer.
func (w *LocalWriter) Send(ctx context.Context, sender, senderDevice, txnID, eventType string, messages map[string]map[string]json.RawMessage) error {
	var wake []string
	local := map[string]map[string]json.RawMessage{}
	remote := map[string]map[string]map[string]json.RawMessage{} // server → user → device → content
	for userID, byDevice := range messages {
		_, server, ok := splitUserID(userID)
		if !ok {
			return fmt.Errorf("send to-device %s: invalid user id %q", eventType, userID)
		}
		if server != w.serverName {
			if remote[server] == nil {
				remote[server] = map[string]map[string]json.RawMessage{}
			}
			remote[server][userID] = byDevice
			continue
		}
		local[userID] = byDevice
		wake = append(wake, streams.UserKey(userID))
	}
	slices.Sort(wake)
	_, err := w.tw.Write(ctx, func(tx *sql.Tx, id int64) error {
		if txnID != "" {
			res, err := tx.ExecContext(ctx, `INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts)
				VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id, txn_id) DO NOTHING`,
				sender, senderDevice, txnID, w.now().UnixMilli())
			if err != nil {
				return fmt.Errorf("record txn: %w", err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return nil // a retry: the first attempt delivered everything
			}
		}
		if err := queueRemoteTx(ctx, tx, id, sender, eventType, remote); err != nil {
			return err
		}
		for userID, byDevice := range local {
			targets, err := expandDevices(ctx, tx, userID, byDevice)
			if err != nil {
				return err
			}
			for deviceID, content := range targets {
				_, err := tx.ExecContext(ctx, `INSERT INTO device_inbox (user_id, device_id, stream_id, sender, type, content, message_id)
					VALUES ($1, $2, $3, $4, $5, $6, $7)`, userID, deviceID, id, sender, eventType, string(content), newMessageID())
				if err != nil {
					return fmt.Errorf("store message for %s/%s: %w", userID, deviceID, err)
				}
			}
		}
		return nil
	}, wake...)
	if err != nil {
		return fmt.Errorf("send to-device %s from %s: %w", eventType, sender, err)
	}
	return nil
}

// queueRemoteTx queues the messages to remote users, one
// m.direct_to_device EDU per server, in federation_edu_outbox (migration
// 0030) under the send's to_device stream id: the federation sender
// following the stream delivers them and deletes them once the server
// acknowledged them. Queuing in the send's transaction means a message
// acknowledged to the client is never lost. Devices ("*" included) are the
// receiving server's to resolve.
func queueRemoteTx(ctx context.Context, tx *sql.Tx, id int64, sender, eventType string, remote map[string]map[string]map[string]json.RawMessage) error {
	for server, messages := range remote {
		edu, err := json.Marshal(map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
			"sender": sender, "type": eventType, "message_id": newMessageID(), "messages": messages}})
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO federation_edu_outbox (destination, stream_name, stream_id, seq, edu_type, content)
			VALUES ($1, $2, $3, 0, 'm.direct_to_device', $4)`, server, string(streams.ToDevice), id, string(edu)); err != nil {
			return fmt.Errorf("queue to-device message for %s: %w", server, err)
		}
	}
	return nil
}

// expandDevices resolves one user's entries to existing devices: "*" is
// every device, an explicit device id (which wins over "*") only if it
// exists. Reading the devices inside the write transaction means a device
// deleted concurrently either gets the message and its inbox is dropped
// with it, or does not get it.
func expandDevices(ctx context.Context, tx *sql.Tx, userID string, byDevice map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	rows, err := tx.QueryContext(ctx, `SELECT device_id FROM devices WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("devices of %s: %w", userID, err)
	}
	defer rows.Close()
	var devices []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, fmt.Errorf("devices of %s: %w", userID, err)
		}
		devices = append(devices, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("devices of %s: %w", userID, err)
	}
	out := map[string]json.RawMessage{}
	if all, ok := byDevice["*"]; ok {
		for _, d := range devices {
			out[d] = all
		}
	}
	for d, content := range byDevice {
		if d != "*" && slices.Contains(devices, d) {
			out[d] = content
		}
	}
	return out, nil
}

func newMessageID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// splitUserID returns localpart and server of "@local:server".
func splitUserID(id string) (local, server string, ok bool) {
	if !strings.HasPrefix(id, "@") || len(id) > 255 {
		return "", "", false
	}
	i := strings.IndexByte(id, ':')
	if i < 2 || i == len(id)-1 {
		return "", "", false
	}
	return id[1:i], id[i+1:], true
}
