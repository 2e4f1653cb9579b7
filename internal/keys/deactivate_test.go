package keys_test

import (
	"slices"
	"testing"

	"ganglion/internal/keys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// TestDeactivationDeletesKeys: deactivating an account deletes its device
// keys, cross-signing keys, signatures made by it and its key backups, and
// announces the change on device_lists; another user's data stays.
func TestDeactivationDeletesKeys(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A")
		bob := f.register(t, "bob", "B")
		const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
		const key = `{"first_message_index":1,"forwarded_count":0,"is_verified":false,"session_data":{"ciphertext":"c"}}`
		for _, d := range []*device{alice, bob} {
			if _, err := f.s.UploadKeys(ctx, d.user, d.id, keys.Upload{DeviceKeys: raw(t, d.deviceKeys(t, "c"))}); err != nil {
				t.Fatal(err)
			}
			for _, step := range [][3]string{
				{"POST", "/keys/device_signing/upload", newCSKeys(t, d.user).upload(t)},
				{"POST", "/room_keys/version", `{"algorithm":"` + alg + `","auth_data":{}}`},
				{"PUT", "/room_keys/keys/!r/s1?version=1", key},
			} {
				if status, _, b := f.do(t, d, step[0], step[1], step[2]); status != 200 {
					t.Fatalf("%s %s %s: %d %s", d.user, step[0], step[1], status, b)
				}
			}
		}
		before := f.deviceRows(t)

		if err := f.acc.Deactivate(ctx, alice.user); err != nil {
			t.Fatal(err)
		}
		count := func(q, user string) int {
			t.Helper()
			var n int
			if err := db.Reader().QueryRowContext(ctx, q, user).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		for q, bobHas := range map[string]bool{
			`SELECT count(*) FROM e2e_device_keys WHERE user_id = $1`:                                            true,
			`SELECT count(*) FROM e2e_cross_signing_keys WHERE user_id = $1`:                                     true,
			`SELECT count(*) FROM e2e_cross_signing_signatures WHERE target_user_id = $1 OR signer_user_id = $1`: false,
			`SELECT count(*) FROM e2e_room_keys WHERE user_id = $1`:                                              true,
			`SELECT count(*) FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted`:                     true,
		} {
			if n := count(q, alice.user); n != 0 {
				t.Errorf("after deactivation %s = %d, want 0", q, n)
			}
			if n := count(q, bob.user); bobHas && n == 0 {
				t.Errorf("bob's data went too: %s = 0", q)
			}
		}
		res, err := f.s.QueryKeys(ctx, bob.user, map[string][]string{alice.user: {}})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.DeviceKeys[alice.user]) != 0 || res.MasterKeys[alice.user] != nil || res.SelfSigningKeys[alice.user] != nil {
			t.Fatalf("deactivated user's keys still served: devices %v, master %s, self-signing %s", res.DeviceKeys[alice.user], res.MasterKeys[alice.user], res.SelfSigningKeys[alice.user])
		}
		// The device deletion and the cross-signing deletion are announced.
		want := append(slices.Clone(before), alice.user+"/", alice.user+"/"+alice.id)
		slices.Sort(want)
		if got := f.deviceRows(t); !slices.Equal(got, want) {
			t.Fatalf("device_lists rows after deactivation:\n got  %v\n want %v", got, want)
		}
	})
}
