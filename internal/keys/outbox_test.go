package keys_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"ganglion/internal/keys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// downWriter is a device_lists writer that cannot be reached: the process
// announcing through it dies (or the writer is down) after the device
// change committed.
type downWriter struct{}

func (downWriter) Update(context.Context, keys.Update) error { return errors.New("writer unreachable") }

// TestDeviceListChangesSurviveLostAnnouncement: every device list change
// the accounts domain makes (registration, login, rename, deletion,
// logout of all devices, deactivation) is recorded in its own
// transaction, so when the announcement after the commit fails nothing is
// lost: the writer's drain (at its start) announces each change once, and
// a deleted device's keys are gone from the start.
func TestDeviceListChangesSurviveLostAnnouncement(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		ctx := ctxT(t)
		f := newFixture(t, db)
		alice := f.register(t, "alice", "A1")
		if _, err := f.s.UploadKeys(ctx, alice.user, alice.id, keys.Upload{DeviceKeys: raw(t, alice.deviceKeys(t, "c"))}); err != nil {
			t.Fatal(err)
		}
		carol := f.register(t, "carol", "C1")
		if status, _, b := f.do(t, carol, "POST", "/keys/device_signing/upload", newCSKeys(t, carol.user).upload(t)); status != 200 {
			t.Fatalf("carol's cross-signing keys: %d %s", status, b)
		}
		before := f.deviceRows(t)

		// From here the announcements fail, as if the process died
		// right after each commit.
		down := keys.NewService(db, f.reg, downWriter{}, server, discard)
		f.acc.SetDeviceListHook(down)
		f.acc.SetDeactivationHook(down)
		bob := f.register(t, "bob", "B1")
		f.login(t, bob.user, "B2")
		if ok, err := f.acc.SetDeviceName(ctx, bob.user, "B1", "renamed"); err != nil || !ok {
			t.Fatalf("rename: %v %v", ok, err)
		}
		if err := f.acc.DeleteDevices(ctx, alice.user, []string{"A1"}); err != nil {
			t.Fatal(err)
		}
		if err := f.acc.Deactivate(ctx, carol.user); err != nil {
			t.Fatal(err)
		}
		if got := f.deviceRows(t); !slices.Equal(got, before) {
			t.Fatalf("announced through a writer that is down: %v", got)
		}
		// The deletion's effects on keys are part of its transaction.
		res, err := f.s.QueryKeys(ctx, bob.user, map[string][]string{alice.user: nil, carol.user: nil})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.DeviceKeys[alice.user]) != 0 || res.MasterKeys[carol.user] != nil {
			t.Fatalf("keys of a deleted device or a deactivated user still served: %v %s", res.DeviceKeys[alice.user], res.MasterKeys[carol.user])
		}

		// The writer starts again and drains.
		if err := f.s.DrainOutbox(ctx, func(string) bool { return true }); err != nil {
			t.Fatal(err)
		}
		want := append(slices.Clone(before), alice.user+"/A1", bob.user+"/B1", bob.user+"/B2", carol.user+"/", carol.user+"/C1")
		slices.Sort(want)
		if got := f.deviceRows(t); !slices.Equal(got, want) {
			t.Fatalf("device_lists after the drain:\n got  %v\n want %v", got, want)
		}
		// Drained once: draining again (another writer, a retried
		// announcement) announces nothing more.
		if err := f.s.DrainOutbox(ctx, func(string) bool { return true }); err != nil {
			t.Fatal(err)
		}
		if err := f.s.AnnounceDeviceChanges(ctx, bob.user); err != nil {
			t.Fatal(err)
		}
		if got := f.deviceRows(t); !slices.Equal(got, want) {
			t.Fatalf("a second drain announced again: %v", got)
		}
	})
}

// deviceRows lists the device_lists rows as "user/device", sorted (one
// per stream row, so a change announced twice shows twice).
func (f *fixture) deviceRows(t *testing.T) []string {
	t.Helper()
	rows, err := f.db.Reader().QueryContext(ctxT(t), `SELECT user_id, device_id FROM device_lists_stream`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u, d string
		if err := rows.Scan(&u, &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, u+"/"+d)
	}
	slices.Sort(out)
	return out
}
