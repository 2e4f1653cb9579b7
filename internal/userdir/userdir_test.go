package userdir_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/events"
	"ganglion/internal/rooms"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/streams"
	"ganglion/internal/testutil"
	"ganglion/internal/userdir"
)

const server = "test.local"

var (
	alice = "@alice:" + server
	bob   = "@bob:" + server
	carol = "@carol:" + server
	dave  = "@dave:" + server
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func raw(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func ptr(s string) *string { return &s }

type env struct {
	db    *storage.DB
	reg   *streams.Registry
	p     *rooms.Persister
	store *userdir.Store
	log   *slog.Logger
}

func newEnv(t *testing.T, db *storage.DB) *env {
	t.Helper()
	reg, err := streams.NewRegistry("main", streams.AllDefs(), nil, streams.NewNotifier())
	if err != nil {
		t.Fatal(err)
	}
	key, err := events.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := rooms.NewPersister(ctxT(t), db, reg, server, key, log)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{db: db, reg: reg, p: p, store: userdir.NewStore(db, server), log: log}
	for _, u := range []string{alice, bob, carol, dave} {
		e.setProfile(t, u, u[1:len(u)-len(server)-1]+" global")
	}
	return e
}

func (e *env) setProfile(t *testing.T, userID, name string) {
	t.Helper()
	err := e.db.Tx(ctxT(t), func(tx *sql.Tx) error {
		return e.store.LocalProfileChanged(ctxT(t), tx, userID, accounts.Profile{DisplayName: &name})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) send(t *testing.T, roomID string, drafts ...rooms.Draft) {
	t.Helper()
	if _, err := e.p.SendEvents(ctxT(t), roomID, drafts); err != nil {
		t.Fatal(err)
	}
}

func member(user, membership string, content map[string]any) rooms.Draft {
	c := map[string]any{"membership": membership}
	for k, v := range content {
		c[k] = v
	}
	return rooms.Draft{Type: "m.room.member", StateKey: ptr(user), Sender: user, Content: raw(c)}
}

func (e *env) createRoom(t *testing.T, roomID, creator, joinRule string) {
	t.Helper()
	e.send(t, roomID,
		rooms.Draft{Type: "m.room.create", StateKey: ptr(""), Sender: creator, RoomVersion: "10",
			Content: raw(map[string]any{"creator": creator, "room_version": "10"})},
		member(creator, "join", nil),
		rooms.Draft{Type: "m.room.power_levels", StateKey: ptr(""), Sender: creator,
			Content: raw(map[string]any{"users": map[string]int{creator: 100}})},
		rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: creator, Content: raw(map[string]any{"join_rule": joinRule})})
}

// runUpdater runs an updater until the returned stop is called.
func (e *env) runUpdater(t *testing.T) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	u := userdir.NewUpdater(e.store, e.reg, e.log)
	go func() { done <- u.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("updater: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// caughtUp waits until the updater's saved position reaches the stream.
func (e *env) caughtUp(t *testing.T) {
	t.Helper()
	want := e.reg.Current(streams.Events)
	testutil.Eventually(t, 20*time.Second, "user directory caught up", func() bool {
		pos, ok, err := e.store.Position(ctxT(t), e.db.Reader())
		return err == nil && ok && pos >= want
	})
}

func (e *env) search(t *testing.T, searcher, term string, o userdir.SearchOptions) map[string]string {
	t.Helper()
	users, _, err := e.store.Search(ctxT(t), searcher, term, 10, o)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, u := range users {
		name := ""
		if u.DisplayName != nil {
			name = *u.DisplayName
		}
		out[u.UserID] = name
	}
	return out
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestDirectoryFollowsRooms(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		e.runUpdater(t)
		private, public := "!private:"+server, "!public:"+server
		e.createRoom(t, private, alice, "invite")
		e.send(t, private, rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: alice,
			Content: raw(map[string]any{"membership": "invite"})})
		e.send(t, private, member(bob, "join", map[string]any{"displayname": "Captain Hook"}))
		e.createRoom(t, public, dave, "public")
		e.caughtUp(t)
		none := userdir.SearchOptions{}

		// alice shares the private room with bob: his room nickname and
		// his global name both find him; the nickname is what matched.
		if got := e.search(t, alice, "capt", none); got[bob] != "Captain Hook" {
			t.Fatalf("alice searching capt: %v", got)
		}
		if got := e.search(t, alice, "BOB glo", none); got[bob] != "bob global" {
			t.Fatalf("alice searching BOB glo: %v", got)
		}
		// carol shares nothing with bob; dave is in a public room.
		if got := e.search(t, carol, "capt", none); len(got) != 0 {
			t.Fatalf("carol found a private room nickname: %v", got)
		}
		if got := e.search(t, carol, "bob", none); len(got) != 0 {
			t.Fatalf("carol found bob without sharing a room: %v", got)
		}
		if got := keys(e.search(t, carol, "dave", none)); !slices.Equal(got, []string{dave}) {
			t.Fatalf("carol searching dave (public room): %v", got)
		}
		// search_all_users: every local user by global profile, but never
		// a room nickname from a room the searcher cannot see.
		all := userdir.SearchOptions{SearchAllUsers: true}
		if got := keys(e.search(t, carol, "bob", all)); !slices.Equal(got, []string{bob}) {
			t.Fatalf("carol searching bob with search_all_users: %v", got)
		}
		if got := e.search(t, carol, "hook", all); len(got) != 0 {
			t.Fatalf("carol found a nickname with search_all_users: %v", got)
		}
		// Making the room public shows its members to everyone.
		e.send(t, private, rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"join_rule": "public"})})
		e.caughtUp(t)
		if got := e.search(t, carol, "hook", none); got[bob] != "Captain Hook" {
			t.Fatalf("carol searching hook in a now public room: %v", got)
		}
		e.send(t, private, rooms.Draft{Type: "m.room.join_rules", StateKey: ptr(""), Sender: alice,
			Content: raw(map[string]any{"join_rule": "invite"})})
		// bob renames himself in the room, then leaves it.
		e.send(t, private, member(bob, "join", map[string]any{"displayname": "Smee"}))
		e.caughtUp(t)
		if got := e.search(t, alice, "capt", none); len(got) != 0 {
			t.Fatalf("old nickname still found: %v", got)
		}
		if got := e.search(t, alice, "smee", none); got[bob] != "Smee" {
			t.Fatalf("new nickname not found: %v", got)
		}
		if got := e.search(t, carol, "smee", none); len(got) != 0 {
			t.Fatalf("carol found a nickname after the room went private: %v", got)
		}
		e.send(t, private, member(bob, "leave", nil))
		e.caughtUp(t)
		if got := e.search(t, alice, "bob", none); len(got) != 0 {
			t.Fatalf("alice still finds bob after he left: %v", got)
		}
		if got := keys(e.search(t, alice, "bob", all)); !slices.Equal(got, []string{bob}) {
			t.Fatalf("search_all_users after bob left: %v", got)
		}
		// exclude_remote_users and prefer_local_users with a remote member.
		remote := "@bob:elsewhere.example"
		e.send(t, public, member(remote, "join", map[string]any{"displayname": "Remote Bob"}))
		e.caughtUp(t)
		if got := keys(e.search(t, carol, "bob", all)); !slices.Equal(got, []string{remote, bob}) {
			t.Fatalf("search bob with a remote user: %v", got)
		}
		if got := keys(e.search(t, carol, "bob", userdir.SearchOptions{SearchAllUsers: true, ExcludeRemoteUsers: true})); !slices.Equal(got, []string{bob}) {
			t.Fatalf("exclude_remote_users: %v", got)
		}
		users, _, err := e.store.Search(ctxT(t), carol, "bob", 10, userdir.SearchOptions{SearchAllUsers: true, PreferLocalUsers: true})
		if err != nil || len(users) != 2 || users[0].UserID != bob {
			t.Fatalf("prefer_local_users: %+v, %v", users, err)
		}
	})
}

// The updater's position is durable: a new updater resumes from it, and a
// directory whose position is gone is rebuilt from current state.
func TestDirectoryResumesAndRebuilds(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		room := "!room:" + server
		// Events from before the directory existed: the first updater
		// builds it from current state.
		e.createRoom(t, room, alice, "invite")
		e.send(t, room, rooms.Draft{Type: "m.room.member", StateKey: ptr(bob), Sender: alice,
			Content: raw(map[string]any{"membership": "invite"})})
		e.send(t, room, member(bob, "join", map[string]any{"displayname": "Before"}))
		stop := e.runUpdater(t)
		e.caughtUp(t)
		if got := e.search(t, alice, "before", userdir.SearchOptions{}); got[bob] != "Before" {
			t.Fatalf("after build: %v", got)
		}
		stop()
		before, _, _ := e.store.Position(ctxT(t), db.Reader())

		// While no updater runs, bob changes his nickname.
		e.send(t, room, member(bob, "join", map[string]any{"displayname": "During"}))
		if got := e.search(t, alice, "during", userdir.SearchOptions{}); len(got) != 0 {
			t.Fatalf("found before any updater ran: %v", got)
		}
		e.runUpdater(t)
		e.caughtUp(t)
		after, _, _ := e.store.Position(ctxT(t), db.Reader())
		if after <= before {
			t.Fatalf("position %d did not advance from %d", after, before)
		}
		if got := e.search(t, alice, "during", userdir.SearchOptions{}); got[bob] != "During" {
			t.Fatalf("resumed updater missed the change: %v", got)
		}

		// A lost position means a rebuild, with the same answer.
		if _, err := db.Exec(ctxT(t), `DELETE FROM user_directory_stream_pos`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctxT(t), `DELETE FROM user_directory_members`); err != nil {
			t.Fatal(err)
		}
		pos, err := userdir.NewUpdater(e.store, e.reg, e.log).Rebuild(ctxT(t))
		if err != nil || pos != e.reg.Current(streams.Events) {
			t.Fatalf("rebuild: %d, %v", pos, err)
		}
		if got := e.search(t, alice, "during", userdir.SearchOptions{}); got[bob] != "During" {
			t.Fatalf("after rebuild: %v", got)
		}
	})
}

func TestSearchTermsAreText(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		e.runUpdater(t)
		room := "!room:" + server
		e.createRoom(t, room, alice, "public")
		e.send(t, room, member(bob, "join", map[string]any{"displayname": "100% Ünïcode_Name " + strings.Repeat("x", 300)}))
		e.caughtUp(t)
		for term, want := range map[string]bool{
			"%": false, "_": false, "üNÏ": true, "100": true, "name": true, "100 name": true, "ame": false,
			"": false, "   ": false, "test.local": true,
			// Words past 200 characters are cut (PostgreSQL's index holds
			// each as a tsvector lexeme): the whole word, or any prefix of
			// it, still finds its owner.
			strings.Repeat("x", 300): true, strings.Repeat("x", 199): true, strings.Repeat("x", 199) + "y": false,
		} {
			got := e.search(t, carol, term, userdir.SearchOptions{})
			if _, found := got[bob]; found != want {
				t.Errorf("search %q: %v, want bob found=%v", term, got, want)
			}
		}
	})
}

// An admin's rebuild request (RequestRebuild, behind `ganglion
// rebuild-user-directory`) makes a running updater rebuild the directory
// from current state: rows lost or gone stale are back, whether the request
// is noticed by the idle updater's poll or by its next batch of events.
func TestDirectoryRebuildOnRequest(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		e := newEnv(t, db)
		room := "!room:" + server
		e.createRoom(t, room, alice, "public")
		e.send(t, room, member(bob, "join", map[string]any{"displayname": "Nick"}))
		e.runUpdater(t)
		e.caughtUp(t)
		if got := e.search(t, carol, "nick", userdir.SearchOptions{}); got[bob] != "Nick" {
			t.Fatalf("before: %v", got)
		}
		found := func(term string) func() bool {
			return func() bool {
				users, _, err := e.store.Search(ctxT(t), carol, term, 10, userdir.SearchOptions{})
				return err == nil && slices.ContainsFunc(users, func(u userdir.User) bool { return u.UserID == bob })
			}
		}
		for _, withEvent := range []bool{false, true} {
			// The directory loses its rows of the room (as a bug or a
			// restore might leave it); following the stream alone would
			// never bring them back.
			if _, err := db.Exec(ctxT(t), `DELETE FROM user_directory_members`); err != nil {
				t.Fatal(err)
			}
			if found("nick")() {
				t.Fatal("bob still found after his rows were deleted")
			}
			if err := e.store.RequestRebuild(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			if withEvent {
				e.send(t, room, member(carol, "join", nil))
			}
			testutil.Eventually(t, 30*time.Second, "directory rebuilt on request", found("nick"))
			e.caughtUp(t)
		}
		// Following resumes after the rebuild.
		e.send(t, room, member(bob, "join", map[string]any{"displayname": "Renamed"}))
		testutil.Eventually(t, 20*time.Second, "change after the rebuild applied", found("renamed"))
	})
}
