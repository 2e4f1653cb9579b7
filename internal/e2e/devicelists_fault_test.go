package e2e_test

import (
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/config"
)

// TestFaultDeviceListWriterDown: device list changes made while the
// device_lists writer that owns the user is down (killed with -9) are
// not lost: a new device, a renamed device and a deleted device (logout)
// all succeed on the generic workers, and once the writer is back a user
// sharing a room sees each owner in device_lists.changed of a sync from
// before the outage.
func TestFaultDeviceListWriterDown(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		f := srv.fleet
		alice := srv.register(t, ctx, "alice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		// Users whose device_lists shard is writer1 (the fleet's writers
		// are main and writer1, sharded by user).
		var owners []string
		for i := 0; len(owners) < 3; i++ {
			lp := "dl" + itoa(i)
			if config.ShardFor([]string{instMain, instWriter}, userID(lp).String()) == instWriter {
				owners = append(owners, lp)
			}
		}
		newDev, renamed, deleted := owners[0], owners[1], owners[2]
		clients := map[string]*mautrix.Client{}
		for _, lp := range owners {
			clients[lp] = srv.register(t, ctx, lp)
			join(t, ctx, clients[lp], room.String())
		}
		second := srv.mustLogin(t, ctx, deleted, password(deleted))
		aliceSync, _ := newSyncer(t, ctx, alice, "")
		from := aliceSync.since

		f.killProc(t, instWriter)
		srv.mustLogin(t, ctx, newDev, password(newDev))
		if err := clients[renamed].SetDeviceInfo(ctx, clients[renamed].DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "renamed during the outage"}); err != nil {
			t.Fatalf("rename a device while writer1 is down: %v", err)
		}
		if _, err := second.Logout(ctx); err != nil {
			t.Fatalf("log a device out while writer1 is down: %v", err)
		}
		f.restartProc(t, instWriter)

		want := []id.UserID{userID(newDev), userID(renamed), userID(deleted)}
		syncFromUntil(t, ctx, alice, from, "the three owners in device_lists.changed after writer1 restarted", func(r *mautrix.RespSync) bool {
			for _, u := range want {
				if !slices.Contains(r.DeviceLists.Changed, u) {
					return false
				}
			}
			return true
		})
	})
}
