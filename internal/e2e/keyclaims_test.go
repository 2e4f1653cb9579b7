package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestE2EOneTimeKeyClaimRace: 50 claims of 20 one-time keys race over every
// client-facing process; no key is handed out twice, every one is handed out,
// the other claims get the fallback key, which the owner's sync then reports
// used.
func TestE2EOneTimeKeyClaimRace(t *testing.T) {
	runDeployments(t, []string{enginePostgres, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		otks := map[string]any{}
		for i := range 20 {
			otks[fmt.Sprintf("signed_curve25519:K%02d", i)] = map[string]any{"key": fmt.Sprintf("key%02d", i)}
		}
		r := srv.doJSON(t, ctx, "POST", clientPath("keys", "upload"), alice.AccessToken, map[string]any{
			"one_time_keys": otks,
			"fallback_keys": map[string]any{"signed_curve25519:FB": map[string]any{"key": "fallback", "fallback": true}},
		})
		if r.status != 200 {
			t.Fatalf("upload: %d %s", r.status, r.body)
		}
		_, first := newSyncer(t, ctx, alice, "")
		if first.DeviceOTKCount.SignedCurve25519 != 20 || !slices.Contains(first.FallbackKeys, id.KeyAlgorithmSignedCurve25519) {
			t.Fatalf("alice's sync: %d one-time keys, unused fallback %v", first.DeviceOTKCount.SignedCurve25519, first.FallbackKeys)
		}

		// Claimers on every worker in turn (the fleet's client() rotates).
		bob := srv.register(t, ctx, "bob")
		var claimers []*mautrix.Client
		for range 4 {
			c := srv.client(t, bob.UserID, bob.AccessToken)
			claimers = append(claimers, c)
		}
		var mu sync.Mutex
		got := map[id.KeyID]int{}
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		start := make(chan struct{})
		for i := range 50 {
			c := claimers[i%len(claimers)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				resp, err := c.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
					alice.UserID: {alice.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for kid := range resp.OneTimeKeys[alice.UserID][alice.DeviceID] {
					got[kid]++
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("claim: %v", err)
		}
		distinct := 0
		for kid, n := range got {
			if kid == "signed_curve25519:FB" {
				continue
			}
			distinct++
			if n != 1 {
				t.Errorf("one-time key %s handed out %d times", kid, n)
			}
		}
		if distinct != 20 || got["signed_curve25519:FB"] != 30 {
			t.Fatalf("%d one-time keys and %d fallback keys handed out, want 20 and 30", distinct, got["signed_curve25519:FB"])
		}
		// A claim after exhaustion still gets the fallback key.
		resp, err := bob.ClaimKeys(ctx, &mautrix.ReqClaimKeys{OneTimeKeys: mautrix.OneTimeKeysRequest{
			alice.UserID: {alice.DeviceID: id.KeyAlgorithmSignedCurve25519}}})
		if err != nil || resp.OneTimeKeys[alice.UserID][alice.DeviceID]["signed_curve25519:FB"].Key != "fallback" {
			t.Fatalf("claim after exhaustion: %+v, %v", resp, err)
		}
		after := doSync(t, ctx, alice, syncParams{})
		if after.DeviceOTKCount.SignedCurve25519 != 0 || len(after.FallbackKeys) != 0 {
			t.Fatalf("alice's sync after the claims: %d one-time keys, unused fallback %v", after.DeviceOTKCount.SignedCurve25519, after.FallbackKeys)
		}
	})
}

// TestE2EDeviceLists: a user's new device reaches the syncs and
// /keys/changes of users sharing a room with them, on whichever process
// they sync; leaving the last shared room puts the user in left.
func TestE2EDeviceLists(t *testing.T) {
	runDeployments(t, []string{engineSQLite, engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol") // shares no room with alice
		roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, roomID.String())
		aliceSync, _ := newSyncer(t, ctx, alice, "")
		from := aliceSync.since

		srv.mustLogin(t, ctx, "bob", password("bob"))
		srv.mustLogin(t, ctx, "carol", password("carol"))
		resp := aliceSync.until(t, ctx, "bob in device_lists.changed", func(r *mautrix.RespSync) bool {
			return slices.Contains(r.DeviceLists.Changed, bob.UserID)
		})
		if slices.Contains(resp.DeviceLists.Changed, carol.UserID) {
			t.Errorf("carol's new device reported to alice: %v", resp.DeviceLists.Changed)
		}
		// Raw: mautrix's GetKeyChanges sends POST, the spec (and we) GET.
		r := srv.do(t, ctx, "GET", clientPath("keys", "changes")+"?from="+url.QueryEscape(from)+"&to="+url.QueryEscape(aliceSync.since),
			alice.AccessToken, nil)
		var changes mautrix.RespKeyChanges
		if r.status != 200 || json.Unmarshal(r.body, &changes) != nil {
			t.Fatalf("keys/changes: %d %s", r.status, r.body)
		}
		if !slices.Contains(changes.Changed, bob.UserID) || slices.Contains(changes.Changed, carol.UserID) {
			t.Fatalf("keys/changes: %s", r.body)
		}

		if _, err := bob.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("bob leaves: %v", err)
		}
		aliceSync.until(t, ctx, "bob in device_lists.left", func(r *mautrix.RespSync) bool {
			return slices.Contains(r.DeviceLists.Left, bob.UserID)
		})
	})
}
