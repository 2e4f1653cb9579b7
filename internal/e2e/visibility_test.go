package e2e_test

import (
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestHistoryVisibility checks what /messages and /event show under each
// m.room.history_visibility setting (spec: "History visibility").
func TestHistoryVisibility(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")

		publicRoom := func(visibility string) id.RoomID {
			return createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{
				Preset: "public_chat",
				InitialState: []*event.Event{{
					Type: event.StateHistoryVisibility, StateKey: new(""),
					Content: event.Content{Raw: map[string]any{"history_visibility": visibility}},
				}},
			})
		}

		t.Run("joined", func(t *testing.T) {
			room := publicRoom("joined")
			early := []id.EventID{send(t, ctx, alice, room, "before bob", "j1"), send(t, ctx, alice, room, "also before bob", "j2")}
			join(t, ctx, bob, room.String())
			late := send(t, ctx, alice, room, "after bob joined", "j3")
			seen := ids(paginate(t, ctx, bob, room, mautrix.DirectionBackward, 5), "m.room.message")
			if !slices.Equal(seen, []id.EventID{late}) {
				t.Fatalf("bob, joined later, sees messages %v; want only %s", seen, late)
			}
			for _, e := range early {
				_, err := bob.GetEvent(ctx, room, e)
				wantHidden(t, err)
			}
			if _, err := bob.GetEvent(ctx, room, late); err != nil {
				t.Fatalf("bob reads a message sent while joined: %v", err)
			}
		})

		t.Run("shared", func(t *testing.T) {
			room := publicRoom("shared")
			early := send(t, ctx, alice, room, "before bob", "s1")
			join(t, ctx, bob, room.String())
			during := send(t, ctx, alice, room, "while bob is here", "s2")
			seen := ids(paginate(t, ctx, bob, room, mautrix.DirectionBackward, 5), "m.room.message")
			if !slices.Equal(seen, []id.EventID{during, early}) {
				t.Fatalf("bob sees %v; want %v (shared history)", seen, []id.EventID{during, early})
			}
			if _, err := bob.GetEvent(ctx, room, early); err != nil {
				t.Fatalf("bob reads shared history: %v", err)
			}

			// After leaving, bob keeps what he could see but nothing newer.
			if _, err := bob.LeaveRoom(ctx, room); err != nil {
				t.Fatalf("leave: %v", err)
			}
			afterLeave := send(t, ctx, alice, room, "after bob left", "s3")
			seen = ids(paginate(t, ctx, bob, room, mautrix.DirectionBackward, 5), "m.room.message")
			if !slices.Equal(seen, []id.EventID{during, early}) {
				t.Fatalf("bob, having left, sees %v; want %v and not %s", seen, []id.EventID{during, early}, afterLeave)
			}
			_, err := bob.GetEvent(ctx, room, afterLeave)
			wantHidden(t, err)
			if _, err := bob.GetEvent(ctx, room, during); err != nil {
				t.Fatalf("bob, having left, reads a message from while he was joined: %v", err)
			}

			// Carol never joined: shared history is not for her.
			_, err = carol.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 5)
			wantMatrixError(t, err, 403, "M_FORBIDDEN")
		})

		t.Run("world_readable", func(t *testing.T) {
			room := publicRoom("world_readable")
			msg := send(t, ctx, alice, room, "for the whole world", "w1")
			seen := ids(paginate(t, ctx, carol, room, mautrix.DirectionBackward, 5), "m.room.message")
			if !slices.Equal(seen, []id.EventID{msg}) {
				t.Fatalf("non-member carol sees %v in a world_readable room; want %s", seen, msg)
			}
			ev, err := carol.GetEvent(ctx, room, msg)
			if err != nil || ev.Content.Raw["body"] != "for the whole world" {
				t.Fatalf("non-member /event in a world_readable room = %+v, %v", ev, err)
			}
			var create map[string]any
			if err := carol.StateEvent(ctx, room, event.StateCreate, "", &create); err != nil {
				t.Fatalf("non-member reads state of a world_readable room: %v", err)
			}
			// Reading is not joining: she still cannot send.
			_, err = carol.SendText(ctx, room, "hello?")
			wantMatrixError(t, err, 403, "M_FORBIDDEN")
		})
	})
}

// wantHidden checks a refused /event: the spec answers 404 M_NOT_FOUND
// ("not found or you do not have permission to read this event"); Synapse
// answers 403 M_FORBIDDEN. Both are accepted.
func wantHidden(t testing.TB, err error) {
	t.Helper()
	wantOneOf(t, err, matrixErr{404, "M_NOT_FOUND"}, matrixErr{403, "M_FORBIDDEN"})
}
