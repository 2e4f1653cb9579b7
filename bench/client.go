package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// client sends Client-Server API requests, each bounded by its own
// timeout.
type client struct {
	hc      *http.Client
	timeout time.Duration
}

func newClient(timeout time.Duration) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// fanout holds one long-poll per member: keep every connection for
	// reuse rather than the default two idle per host, or each returning
	// /sync would open a new one.
	tr.MaxIdleConns = 0
	tr.MaxIdleConnsPerHost = 1 << 16
	return &client{hc: &http.Client{Transport: tr}, timeout: timeout}
}

func (c *client) close() { c.hc.CloseIdleConnections() }

// matrixError is a non-2xx answer.
type matrixError struct {
	Method  string
	Path    string
	Status  int
	ErrCode string
	Message string
	body    []byte
}

func (e *matrixError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d %s: %s", e.Method, e.Path, e.Status, e.ErrCode, e.Message)
}

// do sends one request to base+path and decodes a 2xx JSON answer into
// out (if not nil). The request is bounded by the client's timeout plus
// extra (a long-poll's own wait). It returns the size of the answer.
func (c *client) do(ctx context.Context, extra time.Duration, method, base, path, token string, body, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout+extra)
	defer cancel()
	shortPath, _, _ := strings.Cut(path, "?")
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, fmt.Errorf("encode body of %s %s: %w", method, shortPath, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, fmt.Errorf("build %s %s: %w", method, shortPath, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error repeats the whole URL, query (sync filters) included.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return 0, fmt.Errorf("%s %s: %w", method, shortPath, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return len(data), fmt.Errorf("%s %s: read answer: %w", method, shortPath, err)
	}
	if resp.StatusCode/100 != 2 {
		me := &matrixError{Method: method, Path: shortPath, Status: resp.StatusCode, body: data}
		var m struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(data, &m) == nil && m.ErrCode != "" {
			me.ErrCode, me.Message = m.ErrCode, m.Error
		} else {
			me.Message = truncate(data, 200)
		}
		return len(data), me
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return len(data), fmt.Errorf("%s %s: decode answer: %w", method, shortPath, err)
		}
	}
	return len(data), nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// clientPath is /_matrix/client/v3 followed by the segments, each escaped.
func clientPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/_matrix/client/v3")
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// user is a logged-in device on one of the servers.
type user struct {
	base      string // the base URL this user talks to
	localpart string
	id        string
	token     string
	deviceID  string
}

func password(localpart string) string { return "bench-" + localpart + "-horse-staple" }

// authAnswer is the body of a successful /register, /login or admin
// registration.
type authAnswer struct {
	UserID      string `json:"user_id"`
	AccessToken string `json:"access_token"`
	DeviceID    string `json:"device_id"`
}

func (a authAnswer) user(base, localpart string) (*user, error) {
	if a.UserID == "" || a.AccessToken == "" {
		return nil, fmt.Errorf("%s: answer without user_id or access_token", localpart)
	}
	return &user{base: base, localpart: localpart, id: a.UserID, token: a.AccessToken, deviceID: a.DeviceID}, nil
}

// register creates localpart on base the way -register says.
func (r *runner) register(ctx context.Context, base, localpart string) (*user, error) {
	if r.o.registerMode == regSharedSecret {
		return r.registerShared(ctx, base, localpart)
	}
	body := map[string]any{
		"username":                    localpart,
		"password":                    password(localpart),
		"initial_device_display_name": "bench",
	}
	var out authAnswer
	_, err := r.c.do(ctx, 0, "POST", base, clientPath("register"), "", body, &out)
	if err == nil {
		return out.user(base, localpart)
	}
	// The usual answer: 401 with the user-interactive auth session and
	// flows; the dummy stage completes it.
	var me *matrixError
	if !errors.As(err, &me) || me.Status != http.StatusUnauthorized {
		return nil, fmt.Errorf("register %s: %w", localpart, err)
	}
	var uia struct {
		Session string    `json:"session"`
		Flows   []uiaFlow `json:"flows"`
	}
	if err := json.Unmarshal(me.body, &uia); err != nil {
		return nil, fmt.Errorf("register %s: undecodable auth challenge: %w", localpart, err)
	}
	if !slices.ContainsFunc(uia.Flows, func(f uiaFlow) bool {
		return len(f.Stages) == 1 && f.Stages[0] == "m.login.dummy"
	}) {
		return nil, fmt.Errorf("register %s: the server offers no m.login.dummy flow (open registration off? try -register shared-secret)", localpart)
	}
	auth := map[string]any{"type": "m.login.dummy"}
	if uia.Session != "" {
		auth["session"] = uia.Session
	}
	body["auth"] = auth
	if _, err := r.c.do(ctx, 0, "POST", base, clientPath("register"), "", body, &out); err != nil {
		return nil, fmt.Errorf("register %s with m.login.dummy: %w", localpart, err)
	}
	return out.user(base, localpart)
}

type uiaFlow struct {
	Stages []string `json:"stages"`
}

// registerShared uses Synapse's shared-secret admin registration: a nonce,
// then an HMAC-SHA1 over nonce\0user\0password\0notadmin.
func (r *runner) registerShared(ctx context.Context, base, localpart string) (*user, error) {
	const path = "/_synapse/admin/v1/register"
	var n struct {
		Nonce string `json:"nonce"`
	}
	if _, err := r.c.do(ctx, 0, "GET", base, path, "", nil, &n); err != nil {
		return nil, fmt.Errorf("registration nonce for %s: %w", localpart, err)
	}
	if n.Nonce == "" {
		return nil, fmt.Errorf("registration nonce for %s: empty", localpart)
	}
	pw := password(localpart)
	mac := hmac.New(sha1.New, []byte(r.o.sharedSecret))
	mac.Write([]byte(n.Nonce + "\x00" + localpart + "\x00" + pw + "\x00notadmin"))
	body := map[string]any{
		"nonce":    n.Nonce,
		"username": localpart,
		"password": pw,
		"admin":    false,
		"mac":      hex.EncodeToString(mac.Sum(nil)),
	}
	var out authAnswer
	if _, err := r.c.do(ctx, 0, "POST", base, path, "", body, &out); err != nil {
		return nil, fmt.Errorf("shared-secret registration of %s: %w", localpart, err)
	}
	return out.user(base, localpart)
}

// login logs localpart in with its password, as a new device.
func (r *runner) login(ctx context.Context, base, localpart string) (*user, error) {
	body := map[string]any{
		"type":                        "m.login.password",
		"identifier":                  map[string]any{"type": "m.id.user", "user": localpart},
		"password":                    password(localpart),
		"initial_device_display_name": "bench login",
	}
	var out authAnswer
	if _, err := r.c.do(ctx, 0, "POST", base, clientPath("login"), "", body, &out); err != nil {
		return nil, fmt.Errorf("login %s: %w", localpart, err)
	}
	return out.user(base, localpart)
}

// createRoom creates a room with the preset (public_chat, private_chat).
func (r *runner) createRoom(ctx context.Context, u *user, preset, name string) (string, error) {
	body := map[string]any{"preset": preset, "name": name}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if _, err := r.c.do(ctx, 0, "POST", u.base, clientPath("createRoom"), u.token, body, &out); err != nil {
		return "", fmt.Errorf("%s creates a room: %w", u.localpart, err)
	}
	if out.RoomID == "" {
		return "", fmt.Errorf("%s creates a room: no room_id", u.localpart)
	}
	return out.RoomID, nil
}

func (r *runner) joinRoom(ctx context.Context, u *user, roomID string) error {
	if _, err := r.c.do(ctx, 0, "POST", u.base, clientPath("join", roomID), u.token, map[string]any{}, nil); err != nil {
		return fmt.Errorf("%s joins %s: %w", u.localpart, roomID, err)
	}
	return nil
}

// sendMessage sends an m.room.message with a fresh transaction id.
func (r *runner) sendMessage(ctx context.Context, u *user, roomID string, content any) (string, error) {
	txn := "b" + strconv.FormatInt(r.txn.Add(1), 10)
	var out struct {
		EventID string `json:"event_id"`
	}
	if _, err := r.c.do(ctx, 0, "PUT", u.base, clientPath("rooms", roomID, "send", "m.room.message", txn), u.token, content, &out); err != nil {
		return "", fmt.Errorf("%s sends to %s: %w", u.localpart, roomID, err)
	}
	if out.EventID == "" {
		return "", fmt.Errorf("%s sends to %s: no event_id", u.localpart, roomID)
	}
	return out.EventID, nil
}

type clientEvent struct {
	EventID string          `json:"event_id"`
	Type    string          `json:"type"`
	Sender  string          `json:"sender"`
	Content json.RawMessage `json:"content"`
}

type syncAnswer struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]struct {
			Timeline struct {
				Events  []clientEvent `json:"events"`
				Limited bool          `json:"limited"`
			} `json:"timeline"`
		} `json:"join"`
	} `json:"rooms"`
}

// sync is one /sync; filter is inline JSON or empty. It returns the
// answer and its size.
func (r *runner) sync(ctx context.Context, u *user, since, filter string, timeoutMS int) (*syncAnswer, int, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	q.Set("timeout", strconv.Itoa(timeoutMS))
	var out syncAnswer
	n, err := r.c.do(ctx, time.Duration(timeoutMS)*time.Millisecond, "GET", u.base, clientPath("sync")+"?"+q.Encode(), u.token, nil, &out)
	if err != nil {
		return nil, n, fmt.Errorf("%s syncs: %w", u.localpart, err)
	}
	if out.NextBatch == "" {
		return nil, n, fmt.Errorf("%s syncs: no next_batch", u.localpart)
	}
	return &out, n, nil
}

type messagesAnswer struct {
	Chunk []clientEvent `json:"chunk"`
	Start string        `json:"start"`
	End   string        `json:"end"`
}

// pageMessages is one backwards /messages page; from "" starts at the end of
// the room (Client-Server API v1.3+).
func (r *runner) pageMessages(ctx context.Context, u *user, roomID, from string, limit int) (*messagesAnswer, error) {
	q := url.Values{}
	q.Set("dir", "b")
	q.Set("limit", strconv.Itoa(limit))
	if from != "" {
		q.Set("from", from)
	}
	var out messagesAnswer
	if _, err := r.c.do(ctx, 0, "GET", u.base, clientPath("rooms", roomID, "messages")+"?"+q.Encode(), u.token, nil, &out); err != nil {
		return nil, fmt.Errorf("%s paginates %s: %w", u.localpart, roomID, err)
	}
	return &out, nil
}
