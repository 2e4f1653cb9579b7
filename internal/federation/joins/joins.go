// Package joins is the client side of the federation membership
// handshakes: a local user joins, knocks on or leaves a room this server
// has no joined user in, through a resident server (make_join/send_join,
// make_knock/send_knock, make_leave/send_leave), invites a user of another
// server (whose server co-signs the invite first, PUT invite v2), and
// resolves another server's room alias (query/directory). The events are
// persisted through rooms.RemoteWriter, the persister's path for events
// other servers saw first. It implements rooms.RemoteMembership.
package joins

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/mxhttp"
	"ganglion/internal/rooms"
)

// Client sends signed federation requests (client.Client).
type Client interface {
	SignedGetJSON(ctx context.Context, destination, path string, out any) error
	SignedPutJSON(ctx context.Context, destination, path string, body, out any) error
}

// Options configure a Joiner.
type Options struct {
	ServerName string
	Key        events.SigningKey
	// Now stamps the events built here; nil means time.Now.
	Now func() time.Time
}

// Joiner performs the handshakes.
type Joiner struct {
	opts   Options
	client Client
	keys   serverkeys.VerifyKeyFinder
	rooms  *rooms.Service
	writer rooms.RemoteWriter
	log    *slog.Logger
}

var _ rooms.RemoteMembership = (*Joiner)(nil)

// New builds a Joiner.
func New(opts Options, c Client, keys serverkeys.VerifyKeyFinder, roomSvc *rooms.Service, w rooms.RemoteWriter, log *slog.Logger) *Joiner {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Joiner{opts: opts, client: c, keys: keys, rooms: roomSvc, writer: w, log: log}
}

const (
	v1 = "/_matrix/federation/v1"
	v2 = "/_matrix/federation/v2"
)

func esc(s string) string { return url.PathEscape(s) }

// clientError turns a remote server's refusal into the client's answer:
// its 4xx errcode passes through (a 403 of an invite-only room, a 404 of
// an unknown room, M_INCOMPATIBLE_ROOM_VERSION); anything else (the
// server is down, answered 5xx or nonsense) is a 502.
func clientError(server, what string, err error) error {
	var he *client.HTTPError
	if errors.As(err, &he) && he.Status >= 400 && he.Status < 500 && he.Errcode != "" {
		return mxhttp.WithCode(he.Status, he.Errcode, "%s refused to %s: %s", server, what, he.Message)
	}
	var me *mxhttp.Error
	if errors.As(err, &me) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	e := mxhttp.WithCode(http.StatusBadGateway, "M_UNKNOWN", "Could not %s through %s", what, server)
	e.Cause = err
	return e
}

// template is a make_* answer.
type template struct {
	Event       json.RawMessage `json:"event"`
	RoomVersion string          `json:"room_version"`
}

// templateFields are the fields of a template this server builds on.
type templateFields struct {
	RoomID     string            `json:"room_id"`
	Sender     string            `json:"sender"`
	Type       string            `json:"type"`
	StateKey   *string           `json:"state_key"`
	Content    json.RawMessage   `json:"content"`
	PrevEvents []json.RawMessage `json:"prev_events"`
	AuthEvents []json.RawMessage `json:"auth_events"`
	Depth      int64             `json:"depth"`
}

// refIDs reads prev_events/auth_events in either format: ids (v3+) or
// [id, hashes] pairs (v1, v2).
func refIDs(refs []json.RawMessage) ([]string, error) {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		var id string
		if json.Unmarshal(r, &id) == nil {
			out = append(out, id)
			continue
		}
		var pair []json.RawMessage
		if json.Unmarshal(r, &pair) != nil || len(pair) == 0 || json.Unmarshal(pair[0], &id) != nil {
			return nil, fmt.Errorf("invalid event reference %s", r)
		}
		out = append(out, id)
	}
	return out, nil
}

// makeEvent asks server for a template of userID's membership in roomID
// and builds, from it and our content, the event we sign.
func (j *Joiner) makeEvent(ctx context.Context, server, membership, roomID, userID string, content json.RawMessage,
	withVersions bool) (*events.Event, error) {
	path := v1 + "/make_" + membership + "/" + esc(roomID) + "/" + esc(userID)
	if withVersions {
		q := url.Values{"ver": events.SupportedRoomVersions()}
		path += "?" + q.Encode()
	}
	var t template
	if err := j.client.SignedGetJSON(ctx, server, path, &t); err != nil {
		return nil, clientError(server, membership, err)
	}
	if t.RoomVersion == "" {
		t.RoomVersion = "1" // the spec's default for servers that omit it
	}
	rv, ok := events.LookupRoomVersion(t.RoomVersion)
	if !ok {
		return nil, mxhttp.WithCode(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room %s has version %s, which this server does not support", roomID, t.RoomVersion)
	}
	var f templateFields
	if err := json.Unmarshal(t.Event, &f); err != nil {
		return nil, clientError(server, membership, fmt.Errorf("make_%s template: %w", membership, err))
	}
	var tc map[string]json.RawMessage
	if err := json.Unmarshal(f.Content, &tc); err != nil || tc == nil {
		return nil, clientError(server, membership, fmt.Errorf("make_%s template content: %s", membership, f.Content))
	}
	var m string
	_ = json.Unmarshal(tc["membership"], &m)
	if f.Type != "m.room.member" || f.RoomID != roomID || f.Sender != userID || f.StateKey == nil || *f.StateKey != userID || m != membership {
		return nil, clientError(server, membership, fmt.Errorf("make_%s template is not a %s of %s in %s: %s", membership, membership, userID, roomID, t.Event))
	}
	prev, err := refIDs(f.PrevEvents)
	if err != nil {
		return nil, clientError(server, membership, err)
	}
	auth, err := refIDs(f.AuthEvents)
	if err != nil {
		return nil, clientError(server, membership, err)
	}
	// The resident server's keys (membership, an authoriser) win; the
	// user's profile and reason fill in the rest.
	var ours map[string]json.RawMessage
	if err := json.Unmarshal(content, &ours); err != nil {
		return nil, fmt.Errorf("member content: %w", err)
	}
	for k, v := range ours {
		if _, set := tc[k]; !set {
			tc[k] = v
		}
	}
	c, err := json.Marshal(tc)
	if err != nil {
		return nil, fmt.Errorf("member content: %w", err)
	}
	ev, err := events.Build(events.ProtoEvent{RoomID: roomID, Sender: userID, Type: "m.room.member", StateKey: &userID, Content: c,
		PrevEvents: prev, AuthEvents: auth, Depth: f.Depth, OriginServerTS: j.opts.Now().UnixMilli()}, rv, j.opts.Key, j.opts.ServerName)
	if err != nil {
		return nil, clientError(server, membership, fmt.Errorf("build the %s from the template: %w", membership, err))
	}
	return ev, nil
}

// checked parses the events of a resident server's answer, keeping those
// whose signatures verify (redacted when their content hash does not
// match, as the spec says) and dropping the rest.
func (j *Joiner) checked(ctx context.Context, rv *events.RoomVersion, raws []json.RawMessage) ([]*events.Event, error) {
	out := make([]*events.Event, 0, len(raws))
	for _, raw := range raws {
		ev, err := events.Parse(raw, rv)
		if err != nil {
			j.log.Warn("dropping a malformed event of a send_join answer", "err", err)
			continue
		}
		if err := serverkeys.VerifyEventSignatures(ctx, j.keys, ev); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			j.log.Warn("dropping an event of a send_join answer whose signatures do not verify", "event_id", ev.EventID(), "err", err)
			continue
		}
		if events.CheckContentHash(ev) != nil {
			red, err := ev.Redact()
			if err != nil {
				continue
			}
			ev = red
		}
		out = append(out, ev)
	}
	return out, nil
}

// sendJoinAnswer is a send_join v2 answer.
type sendJoinAnswer struct {
	State     []json.RawMessage `json:"state"`
	AuthChain []json.RawMessage `json:"auth_chain"`
	Event     json.RawMessage   `json:"event"`
}

// Join implements rooms.RemoteMembership.
func (j *Joiner) Join(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	var last error
	for _, server := range servers {
		id, err := j.joinVia(ctx, server, userID, roomID, content)
		if err == nil {
			return id, nil
		}
		if ctx.Err() != nil {
			return "", err
		}
		j.log.Info("remote join failed", "room_id", roomID, "server", server, "err", err)
		last = err
		var me *mxhttp.Error
		if errors.As(err, &me) && me.Code == "M_INCOMPATIBLE_ROOM_VERSION" {
			break // every resident server has the same room version
		}
	}
	if last == nil {
		last = mxhttp.NotFound("No known servers to join %s via", roomID)
	}
	return "", last
}

func (j *Joiner) joinVia(ctx context.Context, server, userID, roomID string, content json.RawMessage) (string, error) {
	ev, err := j.makeEvent(ctx, server, "join", roomID, userID, content, true)
	if err != nil {
		return "", err
	}
	rv := ev.Version()
	var ans sendJoinAnswer
	if err := j.client.SignedPutJSON(ctx, server, v2+"/send_join/"+esc(roomID)+"/"+esc(ev.EventID()), json.RawMessage(ev.JSON()), &ans); err != nil {
		return "", clientError(server, "join", err)
	}
	if len(ans.Event) > 0 {
		// A restricted join comes back with the authorising server's
		// signature.
		signed, err := events.Parse(ans.Event, rv)
		if err != nil || signed.EventID() != ev.EventID() {
			return "", clientError(server, "join", fmt.Errorf("send_join answered another event than %s", ev.EventID()))
		}
		// The event id covers only the redacted form: what the server
		// sent back must still be our content, with valid signatures.
		if err := events.CheckContentHash(signed); err != nil {
			return "", clientError(server, "join", fmt.Errorf("send_join answered %s with altered content", ev.EventID()))
		}
		if err := serverkeys.VerifyEventSignatures(ctx, j.keys, signed); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", clientError(server, "join", fmt.Errorf("send_join answered %s with bad signatures: %w", ev.EventID(), err))
		}
		ev = signed
	}
	state, err := j.checked(ctx, rv, ans.State)
	if err != nil {
		return "", err
	}
	chain, err := j.checked(ctx, rv, ans.AuthChain)
	if err != nil {
		return "", err
	}
	haveCreate := false
	stateIDs := make([]string, 0, len(state))
	outliers := make([]json.RawMessage, 0, len(state)+len(chain))
	for _, e := range chain {
		outliers = append(outliers, e.JSON())
	}
	for _, e := range state {
		if e.RoomID() != roomID || !e.IsState() {
			continue
		}
		haveCreate = haveCreate || e.Type() == "m.room.create"
		stateIDs = append(stateIDs, e.EventID())
		outliers = append(outliers, e.JSON())
	}
	if !haveCreate {
		return "", clientError(server, "join", fmt.Errorf("the send_join answer holds no create event of %s", roomID))
	}
	err = j.persist(ctx, roomID, ev, rooms.RemoteBatch{RoomVersion: rv.ID, Outliers: outliers,
		PDUs: []rooms.RemotePDU{{Event: ev.JSON(), StateBefore: stateIDs}}})
	if err != nil {
		return "", err
	}
	return ev.EventID(), nil
}

// persist hands a batch whose last event is ev to the remote-event writer.
func (j *Joiner) persist(ctx context.Context, roomID string, ev *events.Event, batch rooms.RemoteBatch) error {
	res, err := j.writer.PersistRemote(ctx, roomID, batch)
	if err != nil {
		return fmt.Errorf("persist %s: %w", ev.EventID(), err)
	}
	if len(res) == 0 {
		return fmt.Errorf("persist %s: no result", ev.EventID())
	}
	r := res[len(res)-1]
	switch r.Outcome {
	case rooms.RemotePersisted, rooms.RemoteDuplicate:
		return nil
	case rooms.RemoteRejected, rooms.RemoteSoftFailed:
		return mxhttp.Forbidden("The membership event is not allowed in the room: %s", r.Error)
	}
	return fmt.Errorf("persist %s: outcome %s %s", ev.EventID(), r.Outcome, r.Error)
}

// outOfBand persists a membership of ours built by a resident server in a
// room we have no state to build on, with extra unsigned keys (the
// stripped state of a knock).
func (j *Joiner) outOfBand(ctx context.Context, roomID string, ev *events.Event, unsigned map[string]any) error {
	if len(unsigned) > 0 {
		u, err := json.Marshal(unsigned)
		if err != nil {
			return fmt.Errorf("unsigned of %s: %w", ev.EventID(), err)
		}
		if ev, err = ev.WithUnsigned(u); err != nil {
			return fmt.Errorf("unsigned of %s: %w", ev.EventID(), err)
		}
	}
	return j.persist(ctx, roomID, ev, rooms.RemoteBatch{RoomVersion: ev.Version().ID,
		PDUs: []rooms.RemotePDU{{Event: ev.JSON(), OutOfBand: true}}})
}

// Knock implements rooms.RemoteMembership.
func (j *Joiner) Knock(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	var last error
	for _, server := range servers {
		ev, err := j.makeEvent(ctx, server, "knock", roomID, userID, content, true)
		if err == nil {
			var ans struct {
				KnockRoomState []json.RawMessage `json:"knock_room_state"`
			}
			err = j.client.SignedPutJSON(ctx, server, v1+"/send_knock/"+esc(roomID)+"/"+esc(ev.EventID()), json.RawMessage(ev.JSON()), &ans)
			if err == nil {
				if ans.KnockRoomState == nil {
					ans.KnockRoomState = []json.RawMessage{}
				}
				if err := j.outOfBand(ctx, roomID, ev, map[string]any{"knock_room_state": ans.KnockRoomState}); err != nil {
					return "", err
				}
				return ev.EventID(), nil
			}
			err = clientError(server, "knock", err)
		}
		if ctx.Err() != nil {
			return "", err
		}
		last = err
	}
	if last == nil {
		last = mxhttp.NotFound("No known servers to knock on %s via", roomID)
	}
	return "", last
}

// Leave implements rooms.RemoteMembership.
func (j *Joiner) Leave(ctx context.Context, userID, roomID string, servers []string, content json.RawMessage) (string, error) {
	var last error
	for _, server := range servers {
		ev, err := j.makeEvent(ctx, server, "leave", roomID, userID, content, false)
		if err == nil {
			var ans json.RawMessage
			err = j.client.SignedPutJSON(ctx, server, v2+"/send_leave/"+esc(roomID)+"/"+esc(ev.EventID()), json.RawMessage(ev.JSON()), &ans)
			if err == nil {
				if err := j.outOfBand(ctx, roomID, ev, nil); err != nil {
					return "", err
				}
				return ev.EventID(), nil
			}
			err = clientError(server, "leave", err)
		}
		if ctx.Err() != nil {
			return "", err
		}
		last = err
	}
	if last == nil {
		last = mxhttp.NotFound("No known servers to leave %s via", roomID)
	}
	return "", last
}

// Invite implements rooms.RemoteMembership.
func (j *Joiner) Invite(ctx context.Context, sender, roomID, target string, content json.RawMessage) (string, error) {
	_, server, ok := accounts.SplitUserID(target)
	if !ok {
		return "", mxhttp.InvalidParam("Invalid user id %q", target)
	}
	ev, err := j.rooms.MembershipEvent(ctx, roomID, sender, target, content, j.opts.Key, j.opts.Now())
	if err != nil {
		return "", err
	}
	stripped, err := j.rooms.StrippedState(ctx, roomID)
	if err != nil {
		return "", err
	}
	body := map[string]any{"room_version": ev.Version().ID, "event": json.RawMessage(ev.JSON()), "invite_room_state": stripped}
	var ans struct {
		Event json.RawMessage `json:"event"`
	}
	if err := j.client.SignedPutJSON(ctx, server, v2+"/invite/"+esc(roomID)+"/"+esc(ev.EventID()), body, &ans); err != nil {
		return "", clientError(server, "invite "+target, err)
	}
	signed, err := events.Parse(ans.Event, ev.Version())
	if err != nil || signed.EventID() != ev.EventID() {
		return "", clientError(server, "invite "+target, fmt.Errorf("the invite answer is not the invite %s", ev.EventID()))
	}
	if err := j.verifySignedBy(ctx, signed, server); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", clientError(server, "invite "+target, err)
	}
	if err := j.persist(ctx, roomID, signed, rooms.RemoteBatch{PDUs: []rooms.RemotePDU{{Event: signed.JSON()}}}); err != nil {
		return "", err
	}
	return signed.EventID(), nil
}

// verifySignedBy checks that server signed ev (the invitee's server
// co-signing an invite), with the rules of serverkeys: every signature
// whose key is found verifies, and one at least.
func (j *Joiner) verifySignedBy(ctx context.Context, ev *events.Event, server string) error {
	var w struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(ev.JSON(), &w); err != nil {
		return fmt.Errorf("signatures of %s: %w", ev.EventID(), err)
	}
	var atTS int64
	if ev.Version().EnforceKeyValidity {
		atTS = ev.OriginServerTS()
	}
	verified := 0
	for keyID := range w.Signatures[server] {
		if !strings.HasPrefix(keyID, "ed25519:") {
			continue
		}
		pub, err := j.keys.VerifyKey(ctx, server, keyID, atTS)
		if err != nil {
			continue
		}
		if err := events.VerifyEventSignature(ev, server, keyID, ed25519.PublicKey(pub)); err != nil {
			return err
		}
		verified++
	}
	if verified == 0 {
		return fmt.Errorf("%s did not sign %s with a key we know", server, ev.EventID())
	}
	return nil
}

// QueryAlias implements rooms.RemoteMembership.
func (j *Joiner) QueryAlias(ctx context.Context, alias string) (string, []string, error) {
	i := strings.IndexByte(alias, ':')
	if i < 0 {
		return "", nil, mxhttp.InvalidParam("Invalid room alias %q", alias)
	}
	server := alias[i+1:]
	var ans struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	err := j.client.SignedGetJSON(ctx, server, v1+"/query/directory?"+url.Values{"room_alias": {alias}}.Encode(), &ans)
	if err != nil {
		var he *client.HTTPError
		if errors.As(err, &he) && he.Status == http.StatusNotFound {
			return "", nil, mxhttp.NotFound("Room alias %s not found", alias)
		}
		return "", nil, clientError(server, "resolve "+alias, err)
	}
	if ans.RoomID == "" || ans.RoomID[0] != '!' {
		return "", nil, clientError(server, "resolve "+alias, fmt.Errorf("query/directory answered room id %q", ans.RoomID))
	}
	return ans.RoomID, append(ans.Servers, server), nil
}
