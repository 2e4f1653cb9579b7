// Package dehydrated serves dehydrated devices (MSC3814, unstable prefix
// org.matrix.msc3814.v1): a device a client leaves on the server, with its
// keys and an opaque, client-encrypted device_data, so that to-device
// messages (room keys) sent while the user has no device online are kept
// for it, and a new login can take them over. Served only when
// experimental_features.msc3814_enabled is set, as in Synapse.
//
// The device is an ordinary device without an access token: it shows in
// device lists and /keys/query, and other users encrypt to it. A user has
// at most one; uploading another deletes the previous device. Creating and
// deleting one is one transaction with its device list change
// (accounts.CreateTokenlessDeviceTx / DeleteDeviceTx).
package dehydrated

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"ganglion/internal/accounts"
	"ganglion/internal/keys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
	"ganglion/internal/todevice"
)

// Prefix is where the endpoints live.
const Prefix = "/_matrix/client/unstable/org.matrix.msc3814.v1"

// eventsLimit bounds the to-device messages of one /events answer.
const eventsLimit = 100

// Service is the dehydrated devices endpoint set of one process.
type Service struct {
	db    *storage.DB
	acc   *accounts.Service
	keys  *keys.Service
	inbox *todevice.Service
}

func NewService(db *storage.DB, acc *accounts.Service, k *keys.Service, inbox *todevice.Service) *Service {
	return &Service{db: db, acc: acc, keys: k, inbox: inbox}
}

// Routes registers the endpoints.
func (s *Service) Routes(mux *mxhttp.Mux, srv *mxhttp.Server) {
	mux.Handle("PUT "+Prefix+"/dehydrated_device", srv.Handle(s.acc.Auth(s.put)))
	mux.Handle("GET "+Prefix+"/dehydrated_device", srv.Handle(s.acc.Auth(s.get)))
	mux.Handle("DELETE "+Prefix+"/dehydrated_device", srv.Handle(s.acc.Auth(s.delete)))
	mux.Handle("POST "+Prefix+"/dehydrated_device/{deviceId}/events", srv.Handle(s.acc.Auth(s.events)))
}

func errNone() error { return mxhttp.NotFound("No dehydrated device available") }

// current is the user's dehydrated device ("" if none). A row whose
// device was deleted another way (DELETE /devices, logout of all devices,
// deactivation) names none.
func current(ctx context.Context, q storage.Querier, userID string) (deviceID, data string, err error) {
	err = q.QueryRowContext(ctx, `SELECT d.device_id, d.device_data FROM dehydrated_devices d
		JOIN devices v ON v.user_id = d.user_id AND v.device_id = d.device_id
		WHERE d.user_id = $1`, userID).Scan(&deviceID, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("dehydrated device of %s: %w", userID, err)
	}
	return deviceID, data, nil
}

type putBody struct {
	DeviceID    *string         `json:"device_id"`
	DeviceData  json.RawMessage `json:"device_data"`
	DisplayName string          `json:"initial_device_display_name"`
	keys.Upload
}

func (s *Service) put(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body putBody
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	if body.DeviceID == nil || *body.DeviceID == "" {
		return mxhttp.MissingParam("device_id is required")
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(body.DeviceData, &obj) != nil || obj == nil {
		return mxhttp.BadJSON("device_data must be an object")
	}
	deviceID := *body.DeviceID
	// Checked before anything is stored; UploadKeys checks the rest.
	if len(body.DeviceKeys) > 0 && string(body.DeviceKeys) != "null" {
		if _, err := keys.CheckDeviceKeys(body.DeviceKeys, req.UserID, deviceID); err != nil {
			return err
		}
	}
	var replaced string
	err := s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		ctx := r.Context()
		old, _, err := current(ctx, tx, req.UserID)
		if err != nil {
			return err
		}
		// An existing device may become the dehydrated one only if it
		// already is: taking over a logged-in device would delete it
		// with the next upload.
		if deviceID != old {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM devices WHERE user_id = $1 AND device_id = $2`,
				req.UserID, deviceID).Scan(&n); err != nil {
				return fmt.Errorf("look up device %s: %w", deviceID, err)
			}
			if n > 0 {
				return mxhttp.InvalidParam("device_id %s is an existing device", deviceID)
			}
		}
		if err := s.acc.CreateTokenlessDeviceTx(ctx, tx, req.UserID, deviceID, body.DisplayName); err != nil {
			return err
		}
		if old != "" && old != deviceID {
			if _, err := s.acc.DeleteDeviceTx(ctx, tx, req.UserID, old); err != nil {
				return err
			}
			replaced = old
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)
			ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data`,
			req.UserID, deviceID, string(body.DeviceData))
		return err
	})
	if err != nil {
		var me *mxhttp.Error
		if errors.As(err, &me) {
			return err
		}
		return fmt.Errorf("store dehydrated device of %s: %w", req.UserID, err)
	}
	var gone []string
	if replaced != "" {
		gone = []string{replaced}
	}
	// One announcement covers the new device and the replaced one.
	s.acc.DevicesCommitted(r.Context(), req.UserID, gone)
	if len(body.DeviceKeys) > 0 || len(body.OneTimeKeys) > 0 || len(body.FallbackKeys) > 0 || len(body.FallbackKeysUnstable) > 0 {
		if _, err := s.keys.UploadKeys(r.Context(), req.UserID, deviceID, body.Upload); err != nil {
			return err
		}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"device_id": deviceID})
}

func (s *Service) get(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	deviceID, data, err := current(r.Context(), s.db.Reader(), req.UserID)
	if err != nil {
		return err
	}
	if deviceID == "" {
		return errNone()
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"device_id": deviceID, "device_data": json.RawMessage(data)})
}

func (s *Service) delete(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var deviceID string
	err := s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		var err error
		if deviceID, _, err = current(r.Context(), tx, req.UserID); err != nil || deviceID == "" {
			return err
		}
		if _, err := tx.ExecContext(r.Context(), `DELETE FROM dehydrated_devices WHERE user_id = $1`, req.UserID); err != nil {
			return err
		}
		_, err = s.acc.DeleteDeviceTx(r.Context(), tx, req.UserID, deviceID)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete dehydrated device of %s: %w", req.UserID, err)
	}
	if deviceID == "" {
		return errNone()
	}
	s.acc.DevicesCommitted(r.Context(), req.UserID, []string{deviceID})
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]string{"device_id": deviceID})
}

// events hands out the dehydrated device's to-device messages, oldest
// first, in batches: next_batch acknowledges (deletes) what came before it.
func (s *Service) events(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	var body struct {
		NextBatch *string `json:"next_batch"`
	}
	if err := mxhttp.DecodeJSON(r, &body); err != nil {
		return err
	}
	var from int64
	if body.NextBatch != nil && *body.NextBatch != "" {
		v, err := strconv.ParseInt(*body.NextBatch, 10, 64)
		if err != nil || v < 0 {
			return mxhttp.InvalidParam("next_batch is not a batch token")
		}
		from = v
	}
	deviceID, _, err := current(r.Context(), s.db.Reader(), req.UserID)
	if err != nil {
		return err
	}
	if deviceID == "" || deviceID != r.PathValue("deviceId") {
		return mxhttp.Forbidden("You may only fetch messages for your dehydrated device")
	}
	if err := s.inbox.Ack(r.Context(), req.UserID, deviceID, from); err != nil {
		return err
	}
	msgs, upTo, err := s.inbox.Messages(r.Context(), req.UserID, deviceID, from, max(s.inbox.Position(), from), eventsLimit)
	if err != nil {
		return err
	}
	if msgs == nil {
		msgs = []todevice.Message{}
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"events": msgs, "next_batch": strconv.FormatInt(upTo, 10)})
}
