package rooms_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"ganglion/internal/accounts"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
)

// fakeRemoteHierarchy answers for other servers' rooms and records the
// questions.
type fakeRemoteHierarchy struct {
	mu      sync.Mutex
	answers map[string]*rooms.FederationHierarchy // server + " " + room id
	asked   []string
}

func (f *fakeRemoteHierarchy) FederationHierarchy(_ context.Context, server, roomID string, _ bool) (*rooms.FederationHierarchy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, server+" "+roomID)
	if a, ok := f.answers[server+" "+roomID]; ok {
		return a, nil
	}
	return nil, errors.New("connection refused")
}

func strPtr(s string) *string { return &s }

func childState(child string, via ...string) rooms.StrippedState {
	return rooms.StrippedState{Type: "m.space.child", StateKey: child, Content: raw(map[string]any{"via": via}),
		Sender: "@x:far.test", OriginServerTS: 1}
}

// The client /hierarchy walks into children this server does not have by
// asking their via servers: a remote space is described by its own answer,
// its children by that answer's children (not asked again); rooms the user
// may not see and rooms nobody answers for are left out.
func TestHierarchyAsksViaServersForRemoteChildren(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		p, reg := newPersister(t, db)
		svc := rooms.NewService(rooms.Config{ServerName: server}, rooms.NewStore(db), p, nil, reg, nil,
			slog.New(slog.NewTextHandler(io.Discard, nil)))
		alice := "@alice:" + server
		space := "!space:" + server
		far, grand, hidden, dead := "!far:far.test", "!grand:far.test", "!hidden:far.test", "!dead:gone.test"
		drafts := createDrafts(alice, "10")
		for _, c := range []struct{ room, via string }{{far, "far.test"}, {hidden, "far.test"}, {dead, "gone.test"}} {
			drafts = append(drafts, rooms.Draft{Type: "m.space.child", StateKey: ptr(c.room), Sender: alice,
				Content: raw(map[string]any{"via": []string{server, c.via}})})
		}
		if _, err := p.SendEvents(t.Context(), space, drafts); err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		req := &accounts.Requester{UserID: alice}
		ids := func(r *rooms.HierarchyResponse) []string {
			var out []string
			for _, room := range r.Rooms {
				out = append(out, room.RoomID)
			}
			return out
		}

		// Without federation, only what this server has.
		resp, err := svc.Hierarchy(ctx, req, space, rooms.HierarchyRequest{MaxDepth: -1})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(resp); !slices.Equal(got, []string{space}) {
			t.Fatalf("without federation: %v", got)
		}

		fake := &fakeRemoteHierarchy{answers: map[string]*rooms.FederationHierarchy{
			"far.test " + far: {
				Room: rooms.FederationHierarchyRoom{PublicRoom: rooms.PublicRoom{RoomID: far, Name: strPtr("Far"), JoinRule: "public",
					RoomType: strPtr("m.space"), NumJoinedMembers: 3}, ChildrenState: []rooms.StrippedState{childState(grand, "far.test")}},
				Children: []rooms.FederationHierarchyRoom{{PublicRoom: rooms.PublicRoom{RoomID: grand, Name: strPtr("Grand"),
					JoinRule: "public"}, ChildrenState: []rooms.StrippedState{}}},
			},
			"far.test " + hidden: {Room: rooms.FederationHierarchyRoom{PublicRoom: rooms.PublicRoom{RoomID: hidden, JoinRule: "invite"}}},
		}}
		svc.SetRemoteHierarchy(fake)
		resp, err = svc.Hierarchy(ctx, req, space, rooms.HierarchyRequest{MaxDepth: -1})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ids(resp), []string{space, far, grand}; !slices.Equal(got, want) {
			t.Errorf("rooms %v, want %v", got, want)
		}
		for _, r := range resp.Rooms {
			if r.RoomID == far && (r.Name == nil || *r.Name != "Far" || len(r.ChildrenState) != 1 || r.NumJoinedMembers != 3) {
				t.Errorf("remote space described as %+v", r)
			}
		}
		fake.mu.Lock()
		asked := slices.Clone(fake.asked)
		fake.mu.Unlock()
		slices.Sort(asked)
		// Our own server is never asked; grand came with far's answer.
		if want := []string{"far.test " + far, "far.test " + hidden, "gone.test " + dead}; !slices.Equal(asked, want) {
			t.Errorf("asked %v, want %v", asked, want)
		}
	})
}
