package push

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/mxhttp"
	"ganglion/internal/streams"
)

// notifyPath is the push gateway API's path every http pusher's URL must
// end with.
const notifyPath = "/_matrix/push/v1/notify"

// Pusher is a pusher as GET /pushers shows it.
type Pusher struct {
	PushKey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
}

// PushersRoutes registers GET /pushers and POST /pushers/set.
func (s *Service) PushersRoutes(mux *mxhttp.Mux, srv *mxhttp.Server, acc *accounts.Service) {
	mux.HandleClient("GET", "/pushers", srv.Handle(acc.Auth(s.getPushers)))
	mux.HandleClient("POST", "/pushers/set", srv.Handle(acc.Auth(s.setPusher)))
}

// Pushers lists the user's pushers.
func (s *Service) Pushers(ctx context.Context, userID string) ([]Pusher, error) {
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT pushkey, kind, app_id, app_display_name, device_display_name,
		profile_tag, lang, data FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey`, userID)
	if err != nil {
		return nil, fmt.Errorf("list pushers of %s: %w", userID, err)
	}
	defer rows.Close()
	out := []Pusher{}
	for rows.Next() {
		var p Pusher
		var data string
		if err := rows.Scan(&p.PushKey, &p.Kind, &p.AppID, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag, &p.Lang, &data); err != nil {
			return nil, fmt.Errorf("list pushers of %s: %w", userID, err)
		}
		p.Data = json.RawMessage(data)
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *Service) getPushers(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	list, err := s.Pushers(r.Context(), req.UserID)
	if err != nil {
		return err
	}
	return mxhttp.WriteJSON(w, http.StatusOK, map[string]any{"pushers": list})
}

type setPusherBody struct {
	PushKey           *string                    `json:"pushkey"`
	Kind              json.RawMessage            `json:"kind"`
	AppID             *string                    `json:"app_id"`
	AppDisplayName    *string                    `json:"app_display_name"`
	DeviceDisplayName *string                    `json:"device_display_name"`
	ProfileTag        *string                    `json:"profile_tag"`
	Lang              *string                    `json:"lang"`
	Data              map[string]json.RawMessage `json:"data"`
	Append            bool                       `json:"append"`
}

func (s *Service) setPusher(w http.ResponseWriter, r *http.Request, req *accounts.Requester) error {
	raw, err := mxhttp.ReadBody(r, mxhttp.DefaultMaxBody)
	if err != nil {
		return err
	}
	var b setPusherBody
	if err := mxhttp.DecodeJSONBytes(r, raw, &b); err != nil {
		return err
	}
	if b.AppID == nil || b.PushKey == nil {
		return mxhttp.MissingParam("app_id and pushkey are required")
	}
	if len(*b.AppID) > 64 || len(*b.PushKey) > 512 || *b.AppID == "" || *b.PushKey == "" {
		return mxhttp.InvalidParam("app_id (at most 64 bytes) and pushkey (at most 512 bytes) must be non-empty")
	}
	if string(b.Kind) == "null" {
		// kind null deletes the pusher.
		if _, err := s.db.Exec(r.Context(), `DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3`,
			req.UserID, *b.AppID, *b.PushKey); err != nil {
			return fmt.Errorf("delete pusher: %w", err)
		}
		return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
	}
	var kind string
	if b.Kind == nil || json.Unmarshal(b.Kind, &kind) != nil {
		return mxhttp.MissingParam("kind is required (a string, or null to delete)")
	}
	switch kind {
	case "http":
	case emailKind:
		if !s.emailNotifs {
			return mxhttp.InvalidParam("Email notifications are not enabled on this server (email.enable_notifs)")
		}
		if *b.AppID != emailAppID {
			return mxhttp.InvalidParam("email pushers take app_id %q", emailAppID)
		}
		// The pushkey is the address mail goes to.
		if a, err := mail.ParseAddress(*b.PushKey); err != nil || a.Address != *b.PushKey {
			return mxhttp.InvalidParam("the pushkey of an email pusher must be an email address")
		}
	default:
		return mxhttp.InvalidParam("Unsupported pusher kind %q", kind)
	}
	if b.AppDisplayName == nil || b.DeviceDisplayName == nil || b.Lang == nil || b.Data == nil {
		return mxhttp.MissingParam("app_display_name, device_display_name, lang and data are required")
	}
	if kind == "http" {
		var u string
		if json.Unmarshal(b.Data["url"], &u) != nil || u == "" {
			return mxhttp.MissingParam("data.url is required for http pushers")
		}
		if err := checkGatewayURL(u); err != nil {
			return err
		}
	}
	tag := ""
	if b.ProfileTag != nil {
		tag = *b.ProfileTag
	}
	data, err := json.Marshal(b.Data)
	if err != nil {
		return fmt.Errorf("encode pusher data: %w", err)
	}
	ctx := r.Context()
	// A new pusher starts at the current position: it is not sent what
	// happened before it existed. An update keeps its position.
	start := s.reg.Current(streams.Events)
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		if !b.Append {
			// The spec: without append, the same app id and pushkey of
			// other users go (the device now belongs to this user).
			if _, err := tx.ExecContext(ctx, `DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				*b.AppID, *b.PushKey, req.UserID); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO pushers (user_id, device_id, app_id, pushkey, kind, app_display_name, device_display_name,
			profile_tag, lang, data, pushkey_ts, last_stream_ordering) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
			ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET device_id = excluded.device_id, kind = excluded.kind,
			app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name,
			profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data`,
			req.UserID, req.DeviceID, *b.AppID, *b.PushKey, kind, *b.AppDisplayName, *b.DeviceDisplayName, tag, *b.Lang, string(data),
			time.Now().UnixMilli(), start)
		return err
	})
	if err != nil {
		return fmt.Errorf("set pusher: %w", err)
	}
	return mxhttp.WriteJSON(w, http.StatusOK, struct{}{})
}

// checkGatewayURL: an http pusher's URL must be an absolute http(s) URL of
// the push gateway API's notify endpoint.
func checkGatewayURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !strings.HasSuffix(u.Path, notifyPath) {
		return mxhttp.InvalidParam("data.url must be an http(s) URL ending in %s", notifyPath)
	}
	return nil
}

// DeviceGone deletes the pushers a deleted device set (logout, device
// deletion): the device will not receive them any more.
func (s *Service) DeviceGone(ctx context.Context, userID, deviceID string) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM pushers WHERE user_id = $1 AND device_id = $2`, userID, deviceID); err != nil {
		return fmt.Errorf("delete pushers of device %s of %s: %w", deviceID, userID, err)
	}
	return nil
}
