package interop_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/testutil/testca"
)

// serverKeys fetches a server's own key answer over TLS (trusting only the
// test CA) and checks it is about that server and signed by its own keys.
func serverKeys(t *testing.T, c *http.Client, base, serverName string) *serverkeys.Response {
	t.Helper()
	ctx := testContext(t)
	code, _, raw := getJSON(t, ctx, c, base+serverkeys.PathServer)
	if code != http.StatusOK {
		t.Fatalf("GET %s%s: %d %s", base, serverkeys.PathServer, code, truncate(raw))
	}
	r, err := serverkeys.ParseResponse(raw)
	if err != nil {
		t.Fatalf("%s's key answer: %v", serverName, err)
	}
	if r.ServerName != serverName || len(r.VerifyKeys) == 0 {
		t.Fatalf("%s's key answer is about %q with %d keys: %s", serverName, r.ServerName, len(r.VerifyKeys), raw)
	}
	if err := r.CheckSelfSigned(); err != nil {
		t.Fatalf("%s's key answer: %v", serverName, err)
	}
	return r
}

// notaryEntry finds the entry about server in a notary answer, checks it
// carries exactly want's keys, is signed by server with them and by the
// notary with notaryKeys, and returns it.
func notaryEntry(t *testing.T, raw []byte, server string, want *serverkeys.Response, notary string, notaryKeys map[string]ed25519.PublicKey) {
	t.Helper()
	var out struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("notary answer of %s: %v: %s", notary, err, truncate(raw))
	}
	for _, e := range out.ServerKeys {
		r, err := serverkeys.ParseResponse(e)
		if err != nil {
			t.Fatalf("notary %s's entry: %v: %s", notary, err, e)
		}
		if r.ServerName != server {
			continue
		}
		if len(r.VerifyKeys) != len(want.VerifyKeys) {
			t.Fatalf("notary %s lists keys %v for %s, the server itself %v", notary, r.VerifyKeys, server, want.VerifyKeys)
		}
		for kid, pub := range want.VerifyKeys {
			if !pub.Equal(r.VerifyKeys[kid]) {
				t.Fatalf("notary %s has %s of %s as %x, the server itself %x", notary, kid, server, r.VerifyKeys[kid], pub)
			}
		}
		if err := r.CheckSelfSigned(); err != nil {
			t.Fatalf("notary %s's entry for %s: %v", notary, server, err)
		}
		signed := false
		for kid, pub := range notaryKeys {
			if err := events.VerifyJSON(r.Raw, notary, kid, pub); err != nil {
				t.Fatalf("notary %s's entry for %s: its own signature with %s: %v", notary, server, kid, err)
			}
			signed = true
		}
		if !signed {
			t.Fatalf("notary %s's entry for %s carries no signature of the notary", notary, server)
		}
		return
	}
	t.Fatalf("notary %s has no entry for %s: %s", notary, server, truncate(raw))
}

// TestDendriteServerKeys: each server fetches the other's signing keys over
// TLS and serves them as a notary. Ganglion's keyring fetches Dendrite's
// (GET /_matrix/key/v2/query/{dendrite} on Ganglion) and checks Dendrite's
// signature before serving them with its own; Dendrite does the same for
// Ganglion's (POST /_matrix/key/v2/query on Dendrite). Both answers hold the
// very keys each server publishes itself.
func TestDendriteServerKeys(t *testing.T) {
	ca := testca.New(t)
	g := startGanglion(t, ca)
	d := startDendrite(t, ca)
	ctx := testContext(t)
	fed := tlsClient(ca)

	gKeys := serverKeys(t, fed, g.clientURL, g.serverName)
	dKeys := serverKeys(t, fed, d.fedURL, d.serverName)
	if !gKeys.VerifyKeys[g.key.ID].Equal(g.key.Public()) {
		t.Fatalf("Ganglion publishes %v, its signing key is %s", gKeys.VerifyKeys, g.key.ID)
	}

	// Ganglion as the notary of Dendrite's keys.
	code, _, raw := getJSON(t, ctx, fed, g.clientURL+serverkeys.PathQuery+"/"+url.PathEscape(d.serverName))
	if code != http.StatusOK {
		t.Fatalf("Ganglion notary query for Dendrite: %d %s", code, truncate(raw))
	}
	notaryEntry(t, raw, d.serverName, dKeys, g.serverName, gKeys.VerifyKeys)

	// Dendrite as the notary of Ganglion's keys.
	body, _ := json.Marshal(map[string]any{"server_keys": map[string]any{g.serverName: map[string]any{}}})
	resp, err := fed.Post(d.fedURL+serverkeys.PathQuery, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("Dendrite notary query: %v", err)
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("Dendrite notary query for Ganglion: %d %v %s", resp.StatusCode, err, truncate(raw))
	}
	notaryEntry(t, raw, g.serverName, gKeys, d.serverName, dKeys.VerifyKeys)
}

// TestDendriteProfileQueries: signed federation requests both ways.
// Dendrite's client API looks up a Ganglion user's profile, which Dendrite
// does with a federation query/profile signed with X-Matrix: Ganglion
// checks the signature with the key its keyring fetched from Dendrite and
// answers. Ganglion's federation client, signing with Ganglion's key, asks
// Dendrite for a Dendrite user's profile: Dendrite fetches Ganglion's key
// to check the request and answers. A request signed with a key Ganglion
// never published is refused by Dendrite.
func TestDendriteProfileQueries(t *testing.T) {
	ca := testca.New(t)
	g := startGanglion(t, ca)
	d := startDendrite(t, ca)
	ctx := testContext(t)

	alice := g.register(t, ctx, "alice")
	if err := alice.SetDisplayName(ctx, "Alice of Ganglion"); err != nil {
		t.Fatal(err)
	}
	bob := d.register(t, ctx, "bob")
	if err := bob.SetDisplayName(ctx, "Bob of Dendrite"); err != nil {
		t.Fatal(err)
	}

	// Dendrite → Ganglion.
	p, err := bob.GetProfile(ctx, alice.UserID)
	if err != nil {
		t.Fatalf("Dendrite's client API: profile of %s: %v", alice.UserID, err)
	}
	if p.DisplayName != "Alice of Ganglion" {
		t.Fatalf("Dendrite says %s's displayname is %q", alice.UserID, p.DisplayName)
	}
	// A user Ganglion does not have: Dendrite relays Ganglion's 404.
	if _, err := bob.GetProfile(ctx, g.userID("nobody")); err == nil {
		t.Fatalf("Dendrite found a profile for a user Ganglion does not have")
	}

	// Ganglion → Dendrite, with Ganglion's own key.
	loopback := client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	fc, err := client.New(client.Options{ServerName: g.serverName, Key: g.key, RootCAs: ca.Pool(), IPFilter: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer fc.CloseIdleConnections()
	var prof struct {
		DisplayName string `json:"displayname"`
	}
	path := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape(bob.UserID.String())
	if err := fc.SignedGetJSON(ctx, d.serverName, path, &prof); err != nil {
		t.Fatalf("query Dendrite for %s's profile: %v", bob.UserID, err)
	}
	if prof.DisplayName != "Bob of Dendrite" {
		t.Fatalf("Dendrite answered %s's displayname as %q", bob.UserID, prof.DisplayName)
	}

	// The same request signed with a key Ganglion does not publish.
	forged, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	fc2, err := client.New(client.Options{ServerName: g.serverName, Key: forged, RootCAs: ca.Pool(), IPFilter: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer fc2.CloseIdleConnections()
	err = fc2.SignedGetJSON(ctx, d.serverName, path, &prof)
	var he *client.HTTPError
	if !errors.As(err, &he) || (he.Status != http.StatusUnauthorized && he.Status != http.StatusForbidden) {
		t.Fatalf("Dendrite answered a request signed with an unpublished key of %s with %v, want 401 or 403", g.serverName, err)
	}
}

// TestDendriteReadsGanglionDirectory: Dendrite's users resolve a Ganglion
// room alias (Dendrite asks Ganglion's federation query/directory) and
// list Ganglion's public rooms (Dendrite asks Ganglion's federation
// publicRooms); an alias Ganglion does not have is not found.
func TestDendriteReadsGanglionDirectory(t *testing.T) {
	ca := testca.New(t)
	g := startGanglion(t, ca)
	d := startDendrite(t, ca)
	ctx := testContext(t)

	alice := g.register(t, ctx, "alice")
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public",
		RoomAliasName: "interop", Name: "Interop lobby", Topic: "shared with Dendrite"})
	if err != nil {
		t.Fatal(err)
	}
	bob := d.register(t, ctx, "bob")

	alias := id.NewRoomAlias("interop", g.serverName)
	res, err := bob.ResolveAlias(ctx, alias)
	if err != nil {
		t.Fatalf("Dendrite resolves %s: %v", alias, err)
	}
	if res.RoomID != created.RoomID || !slices.Contains(res.Servers, g.serverName) {
		t.Fatalf("Dendrite resolves %s to %s via %v, want %s via %s", alias, res.RoomID, res.Servers, created.RoomID, g.serverName)
	}
	if _, err := bob.ResolveAlias(ctx, id.NewRoomAlias("missing", g.serverName)); err == nil {
		t.Fatalf("Dendrite resolved an alias Ganglion does not have")
	}

	rooms, err := bob.PublicRooms(ctx, &mautrix.ReqPublicRooms{Server: g.serverName, Limit: 10})
	if err != nil {
		t.Fatalf("Dendrite lists %s's public rooms: %v", g.serverName, err)
	}
	i := slices.IndexFunc(rooms.Chunk, func(r *mautrix.PublicRoomInfo) bool { return r.RoomID == created.RoomID })
	if i < 0 {
		t.Fatalf("Dendrite's list of %s's public rooms lacks %s: %+v", g.serverName, created.RoomID, rooms.Chunk)
	}
	r := rooms.Chunk[i]
	if r.Name != "Interop lobby" || r.Topic != "shared with Dendrite" || r.CanonicalAlias != alias || r.NumJoinedMembers != 1 {
		t.Fatalf("Dendrite lists %s as %+v", created.RoomID, r)
	}
}

// signedObject signs obj (without "signatures" and "unsigned") as the
// device key keyID of user, the way clients sign device and one-time keys.
func signedObject(t *testing.T, obj map[string]any, user id.UserID, keyID string, priv ed25519.PrivateKey) map[string]any {
	t.Helper()
	unsigned := map[string]any{}
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			unsigned[k] = v
		}
	}
	raw, err := json.Marshal(unsigned)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := canonicaljson.Canonicalize(raw, true)
	if err != nil {
		t.Fatal(err)
	}
	sig := base64.RawStdEncoding.EncodeToString(ed25519.Sign(priv, canon))
	obj["signatures"] = map[string]any{user.String(): map[string]any{keyID: sig}}
	return obj
}

// uploaded is what uploadKeys uploaded.
type uploaded struct {
	dev        string
	edKey      string         // the device's ed25519 key, unpadded base64
	deviceKeys map[string]any // the signed device keys
	otk        map[string]any // the signed one-time key signed_curve25519:AAAAAQ
}

// uploadKeys uploads signed device keys and one signed_curve25519 one-time
// key for c's device, as an encrypting client would (the curve25519 keys
// are placeholders: nothing here encrypts).
func uploadKeys(t *testing.T, ctx context.Context, server string, c *mautrix.Client) uploaded {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := c.DeviceID.String()
	keyID := "ed25519:" + dev
	u := uploaded{dev: dev, edKey: base64.RawStdEncoding.EncodeToString(pub)}
	u.deviceKeys = signedObject(t, map[string]any{
		"user_id":    c.UserID.String(),
		"device_id":  dev,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{keyID: u.edKey, "curve25519:" + dev: base64.RawStdEncoding.EncodeToString(make([]byte, 32))},
	}, c.UserID, keyID, priv)
	u.otk = signedObject(t, map[string]any{"key": base64.RawStdEncoding.EncodeToString(pub)}, c.UserID, keyID, priv)
	var resp struct {
		Counts map[string]int `json:"one_time_key_counts"`
	}
	if _, err := c.MakeRequest(ctx, http.MethodPost, c.BuildClientURL("v3", "keys", "upload"), map[string]any{
		"device_keys":   u.deviceKeys,
		"one_time_keys": map[string]any{"signed_curve25519:AAAAAQ": u.otk},
	}, &resp); err != nil {
		t.Fatalf("upload %s's keys to %s: %v", c.UserID, server, err)
	}
	if resp.Counts["signed_curve25519"] != 1 {
		t.Fatalf("%s counts %v one-time keys after the upload", server, resp.Counts)
	}
	return u
}

// TestDendriteQueriesGanglionKeys: a Dendrite user's /keys/query and
// /keys/claim for a Ganglion user make Dendrite call Ganglion's federation
// user/keys/query and user/keys/claim; Dendrite hands back the device keys
// and the one-time key the Ganglion user uploaded, signatures intact.
func TestDendriteQueriesGanglionKeys(t *testing.T) {
	ca := testca.New(t)
	g := startGanglion(t, ca)
	d := startDendrite(t, ca)
	ctx := testContext(t)

	alice := g.register(t, ctx, "alice")
	bob := d.register(t, ctx, "bob")
	up := uploadKeys(t, ctx, "Ganglion", alice)
	dev, edKey, otk := up.dev, up.edKey, up.otk
	deviceKeys := up.deviceKeys

	q, err := bob.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice.UserID: {}}, Timeout: 10000})
	if err != nil {
		t.Fatalf("Dendrite's /keys/query for %s: %v", alice.UserID, err)
	}
	if len(q.Failures) != 0 {
		t.Fatalf("Dendrite's /keys/query for %s failed for %v", alice.UserID, q.Failures)
	}
	got, ok := q.DeviceKeys[alice.UserID][alice.DeviceID]
	if !ok {
		t.Fatalf("Dendrite's /keys/query has no device %s of %s: %+v", dev, alice.UserID, q.DeviceKeys)
	}
	if got.Keys[id.NewDeviceKeyID(id.KeyAlgorithmEd25519, alice.DeviceID)] != edKey || got.UserID != alice.UserID {
		t.Fatalf("Dendrite has %s's device %s as %+v", alice.UserID, dev, got)
	}
	wantSig := deviceKeys["signatures"].(map[string]any)[alice.UserID.String()].(map[string]any)["ed25519:"+dev]
	if gotSig := got.Signatures[alice.UserID][id.NewKeyID(id.KeyAlgorithmEd25519, dev)]; gotSig != wantSig {
		t.Fatalf("Dendrite hands back %s's device keys signed %q, uploaded signed %q", alice.UserID, gotSig, wantSig)
	}

	c, err := bob.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
		alice.UserID: {alice.DeviceID: id.KeyAlgorithmSignedCurve25519}}, Timeout: 10000})
	if err != nil {
		t.Fatalf("Dendrite's /keys/claim for %s: %v", alice.UserID, err)
	}
	if len(c.Failures) != 0 {
		t.Fatalf("Dendrite's /keys/claim for %s failed for %v", alice.UserID, c.Failures)
	}
	keys := c.OneTimeKeys[alice.UserID][alice.DeviceID]
	k, ok := keys[id.KeyID("signed_curve25519:AAAAAQ")]
	if len(keys) != 1 || !ok || k.Key != id.Curve25519(otk["key"].(string)) {
		t.Fatalf("Dendrite's claim of %s's one-time key gave %+v", alice.UserID, keys)
	}
}

// TestDendriteAnswersGanglionFederationClient: Ganglion's federation
// client, signing as Ganglion, reads Dendrite's directory, public rooms,
// device list and keys (GET and POST requests, whose X-Matrix signature
// covers the body); Dendrite checks each against the key it fetches from
// Ganglion and answers.
func TestDendriteAnswersGanglionFederationClient(t *testing.T) {
	ca := testca.New(t)
	g := startGanglion(t, ca)
	d := startDendrite(t, ca)
	ctx := testContext(t)

	bob := d.register(t, ctx, "bob")
	created, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Visibility: "public",
		RoomAliasName: "dlobby", Name: "Dendrite lobby"})
	if err != nil {
		t.Fatal(err)
	}
	up := uploadKeys(t, ctx, "Dendrite", bob)

	fc, err := client.New(client.Options{ServerName: g.serverName, Key: g.key, RootCAs: ca.Pool(),
		IPFilter: client.IPFilter{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer fc.CloseIdleConnections()
	const fed = "/_matrix/federation/v1"

	alias := id.NewRoomAlias("dlobby", d.serverName)
	var dir struct {
		RoomID  id.RoomID `json:"room_id"`
		Servers []string  `json:"servers"`
	}
	if err := fc.SignedGetJSON(ctx, d.serverName, fed+"/query/directory?room_alias="+url.QueryEscape(alias.String()), &dir); err != nil {
		t.Fatalf("query Dendrite's directory for %s: %v", alias, err)
	}
	if dir.RoomID != created.RoomID || !slices.Contains(dir.Servers, d.serverName) {
		t.Fatalf("Dendrite resolves %s to %s via %v, want %s", alias, dir.RoomID, dir.Servers, created.RoomID)
	}

	var rooms mautrix.RespPublicRooms
	if err := fc.SignedGetJSON(ctx, d.serverName, fed+"/publicRooms?limit=10", &rooms); err != nil {
		t.Fatalf("Dendrite's public rooms: %v", err)
	}
	if !slices.ContainsFunc(rooms.Chunk, func(r *mautrix.PublicRoomInfo) bool {
		return r.RoomID == created.RoomID && r.Name == "Dendrite lobby"
	}) {
		t.Fatalf("Dendrite's public rooms lack %s: %+v", created.RoomID, rooms.Chunk)
	}

	var devices struct {
		UserID  id.UserID `json:"user_id"`
		Devices []struct {
			DeviceID string         `json:"device_id"`
			Keys     map[string]any `json:"keys"`
		} `json:"devices"`
	}
	if err := fc.SignedGetJSON(ctx, d.serverName, fed+"/user/devices/"+url.PathEscape(bob.UserID.String()), &devices); err != nil {
		t.Fatalf("Dendrite's user/devices of %s: %v", bob.UserID, err)
	}
	if devices.UserID != bob.UserID || len(devices.Devices) != 1 || devices.Devices[0].DeviceID != up.dev {
		t.Fatalf("Dendrite lists %s's devices as %+v, want the one device %s", bob.UserID, devices, up.dev)
	}

	var q struct {
		DeviceKeys map[string]map[string]struct {
			Keys map[string]string `json:"keys"`
		} `json:"device_keys"`
	}
	body := map[string]any{"device_keys": map[string]any{bob.UserID.String(): []string{}}}
	if err := fc.SignedPostJSON(ctx, d.serverName, fed+"/user/keys/query", body, &q); err != nil {
		t.Fatalf("Dendrite's user/keys/query for %s: %v", bob.UserID, err)
	}
	if got := q.DeviceKeys[bob.UserID.String()][up.dev].Keys["ed25519:"+up.dev]; got != up.edKey {
		t.Fatalf("Dendrite's user/keys/query gives %s's ed25519 key as %q, want %q (%+v)", bob.UserID, got, up.edKey, q)
	}

	var c struct {
		OneTimeKeys map[string]map[string]map[string]struct {
			Key string `json:"key"`
		} `json:"one_time_keys"`
	}
	body = map[string]any{"one_time_keys": map[string]any{bob.UserID.String(): map[string]string{up.dev: "signed_curve25519"}}}
	if err := fc.SignedPostJSON(ctx, d.serverName, fed+"/user/keys/claim", body, &c); err != nil {
		t.Fatalf("Dendrite's user/keys/claim for %s: %v", bob.UserID, err)
	}
	if got := c.OneTimeKeys[bob.UserID.String()][up.dev]["signed_curve25519:AAAAAQ"].Key; got != up.otk["key"] {
		t.Fatalf("Dendrite's user/keys/claim gives %s's one-time key as %q, want %q (%+v)", bob.UserID, got, up.otk["key"], c)
	}
}
