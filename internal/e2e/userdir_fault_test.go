package e2e_test

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestUserDirectoryUpdaterKilled: the directory's one updater (writer1 in
// the test fleet) is killed with -9; changes made while it is down reach
// the directory once it is back, from its saved position rather than a
// rebuild, and searches keep being answered meanwhile.
func TestUserDirectoryUpdaterKilled(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineFleet}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		f := srv.fleet
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		invite(t, ctx, alice, room, bob.UserID)
		join(t, ctx, bob, room.String())
		waitDir(t, ctx, alice, "bob", "alice finds bob", func(m map[id.UserID]string) bool { _, ok := m[bob.UserID]; return ok })

		f.killProc(t, instWriter)
		if _, err := bob.SendStateEvent(ctx, room, event.StateMember, bob.UserID.String(),
			map[string]any{"membership": "join", "displayname": "Crash Survivor"}); err != nil {
			t.Fatal(err)
		}
		// Searches are answered by the workers while the updater is down.
		if got := searchDir(t, ctx, alice, "survivor"); len(got) != 0 {
			t.Fatalf("found before the updater ran: %v", got)
		}
		f.restartProc(t, instWriter)
		waitDir(t, ctx, alice, "survivor", "the restarted updater applies the change", func(m map[id.UserID]string) bool {
			return m[bob.UserID] == "Crash Survivor"
		})
		if n := strings.Count(f.proc(instWriter).logs.String(), "building the user directory"); n != 1 {
			t.Fatalf("the directory was built %d times, want once (the restart resumes)", n)
		}
	})
}
