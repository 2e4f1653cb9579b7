package e2e_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// dlSteps is one case of TestE2EDeviceListsTokenRange: what happens in the
// range and after it, and what the range's device_lists must say.
type dlSteps struct {
	in    func()
	after func() // nil: nothing
	// changed and left must be listed there (and not in the other list);
	// absent must be in neither.
	changed, left, absent []id.UserID
	// markRoom/markUser: a membership event of markUser in markRoom
	// happens in the range; the sync is complete once it shows it.
	markRoom id.RoomID
	markUser id.UserID
}

// dlCase sets a case up (rooms and users before the range, for the
// syncing user u, whose memberships settle names) and returns its steps.
type dlCase struct {
	name string
	run  func(e *dlEnv) dlSteps
}

// dlEnv is what a case sets itself up with.
type dlEnv struct {
	t   *testing.T
	ctx context.Context
	srv *server
	u   *mautrix.Client // the syncing user
	// prefix makes the case's localparts unique on the shared server.
	prefix string
	// want lists the memberships of the set-up that from must cover.
	want []memberWant
}

// mk registers the case's user name.
func (e *dlEnv) mk(name string) *mautrix.Client { return e.srv.register(e.t, e.ctx, e.prefix+name) }

// settle says the set-up made users members of room.
func (e *dlEnv) settle(room id.RoomID, users ...id.UserID) {
	for _, u := range users {
		e.want = append(e.want, memberWant{room, u})
	}
}

// login logs c's user in on a new device (a device list change).
func (e *dlEnv) login(c *mautrix.Client) {
	lp, _, _ := c.UserID.Parse()
	e.srv.mustLogin(e.t, e.ctx, lp, password(lp))
}

// TestE2EDeviceListsTokenRange: /sync's device_lists and /keys/changes
// judge who shares a room with the syncing user by membership as of the
// token range: joins, leaves and new devices in the range are reported
// against it, and (for /keys/changes with a to in the past) membership
// changes after the range do not change the answer.
func TestE2EDeviceListsTokenRange(t *testing.T) {
	t.Parallel()
	pub := &mautrix.ReqCreateRoom{Preset: "public_chat"}
	leave := func(t *testing.T, ctx context.Context, c *mautrix.Client, room id.RoomID) {
		t.Helper()
		if _, err := c.LeaveRoom(ctx, room); err != nil {
			t.Fatalf("%s leaves %s: %v", c.UserID, room, err)
		}
	}
	cases := []dlCase{
		{"a user joins a shared room", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, u, pub)
			e.settle(r, u.UserID)
			return dlSteps{in: func() { join(t, ctx, v, r.String()) }, after: func() { leave(t, ctx, v, r) },
				changed: []id.UserID{v.UserID}}
		}},
		{"a user leaves the shared room", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, u, pub)
			join(t, ctx, v, r.String())
			e.settle(r, u.UserID, v.UserID)
			return dlSteps{in: func() { leave(t, ctx, v, r) }, after: func() { join(t, ctx, v, r.String()) },
				left: []id.UserID{v.UserID}}
		}},
		{"the syncing user leaves the only shared room", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, v, pub)
			join(t, ctx, u, r.String())
			e.settle(r, u.UserID, v.UserID)
			return dlSteps{in: func() { leave(t, ctx, u, r) }, after: func() { join(t, ctx, u, r.String()) },
				left: []id.UserID{v.UserID}}
		}},
		{"a user leaves one of two shared rooms", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r1, r2 := createRoom(t, ctx, u, pub), createRoom(t, ctx, u, pub)
			join(t, ctx, v, r1.String())
			join(t, ctx, v, r2.String())
			e.settle(r1, u.UserID, v.UserID)
			e.settle(r2, u.UserID, v.UserID)
			return dlSteps{in: func() { leave(t, ctx, v, r1) }, absent: []id.UserID{v.UserID}, markRoom: r1, markUser: v.UserID}
		}},
		{"a sharing user's new device", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, u, pub)
			join(t, ctx, v, r.String())
			e.settle(r, u.UserID, v.UserID)
			return dlSteps{in: func() { e.login(v) }, after: func() { leave(t, ctx, v, r) },
				changed: []id.UserID{v.UserID}}
		}},
		{"a stranger's new device", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v, w := e.mk("v"), e.mk("w")
			r := createRoom(t, ctx, u, pub)
			join(t, ctx, v, r.String())
			e.settle(r, u.UserID, v.UserID)
			return dlSteps{in: func() { e.login(w); e.login(v) },
				changed: []id.UserID{v.UserID}, absent: []id.UserID{w.UserID}}
		}},
		{"a display name change is not a join", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, u, pub)
			join(t, ctx, v, r.String())
			e.settle(r, u.UserID, v.UserID)
			return dlSteps{in: func() {
				if _, err := v.SendStateEvent(ctx, r, event.StateMember, v.UserID.String(),
					map[string]any{"membership": "join", "displayname": "Renamed"}); err != nil {
					t.Fatalf("rename: %v", err)
				}
			}, absent: []id.UserID{v.UserID}, markRoom: r, markUser: v.UserID}
		}},
		{"a user joins and leaves in the range", func(e *dlEnv) dlSteps {
			t, ctx, u := e.t, e.ctx, e.u
			v := e.mk("v")
			r := createRoom(t, ctx, u, pub)
			e.settle(r, u.UserID)
			return dlSteps{in: func() { join(t, ctx, v, r.String()); leave(t, ctx, v, r) },
				absent: []id.UserID{v.UserID}, markRoom: r, markUser: v.UserID}
		}},
	}
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleetRouter}, func(t *testing.T, srv *server) {
		for i, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ctx := testContext(t)
				e := &dlEnv{t: t, ctx: ctx, srv: srv, prefix: "r" + itoa(i)}
				e.u = srv.register(t, ctx, e.prefix+"u")
				u := e.u
				us, _ := newSyncer(t, ctx, u, "")
				steps := c.run(e)
				want := e.want
				// from covers the set-up on whichever process answers.
				seen := map[memberWant]bool{}
				us.until(t, ctx, "the set-up in "+u.UserID.String()+"'s sync", func(r *mautrix.RespSync) bool {
					for _, w := range want {
						if memberSeen(r, w.room, w.user) {
							seen[w] = true
						}
					}
					return len(seen) == len(want)
				})
				from := us.since
				steps.in()
				resp := syncFromUntil(t, ctx, u, from, c.name, func(r *mautrix.RespSync) bool {
					return containsAll(r.DeviceLists.Changed, steps.changed) && containsAll(r.DeviceLists.Left, steps.left) &&
						(steps.markUser == "" || memberSeen(r, steps.markRoom, steps.markUser))
				})
				checkDeviceLists(t, "/sync", resp.DeviceLists.Changed, resp.DeviceLists.Left, steps)
				to := resp.NextBatch
				if steps.after != nil {
					steps.after()
				}
				r := srv.do(t, ctx, "GET", clientPath("keys", "changes")+"?from="+url.QueryEscape(from)+"&to="+url.QueryEscape(to),
					u.AccessToken, nil)
				var changes mautrix.RespKeyChanges
				if r.status != 200 || json.Unmarshal(r.body, &changes) != nil {
					t.Fatalf("keys/changes: %d %s", r.status, r.body)
				}
				checkDeviceLists(t, "/keys/changes after later membership changes", changes.Changed, changes.Left, steps)
			})
		}
	})
}

type memberWant struct {
	room id.RoomID
	user id.UserID
}

// memberSeen reports whether resp carries a membership event of user in
// room (state or timeline, joined or left section).
func memberSeen(resp *mautrix.RespSync, room id.RoomID, user id.UserID) bool {
	var evs []*event.Event
	if jr := resp.Rooms.Join[room]; jr != nil {
		evs = append(append(evs, jr.State.Events...), jr.Timeline.Events...)
	}
	if lr := resp.Rooms.Leave[room]; lr != nil {
		evs = append(append(evs, lr.State.Events...), lr.Timeline.Events...)
	}
	return memberEventIn(evs, user) != nil
}

func containsAll(have, want []id.UserID) bool {
	for _, u := range want {
		if !slices.Contains(have, u) {
			return false
		}
	}
	return true
}

func checkDeviceLists(t *testing.T, what string, changed, left []id.UserID, s dlSteps) {
	t.Helper()
	for _, u := range s.changed {
		if !slices.Contains(changed, u) || slices.Contains(left, u) {
			t.Errorf("%s: %s should be in changed only: changed %v left %v", what, u, changed, left)
		}
	}
	for _, u := range s.left {
		if !slices.Contains(left, u) || slices.Contains(changed, u) {
			t.Errorf("%s: %s should be in left only: changed %v left %v", what, u, changed, left)
		}
	}
	for _, u := range s.absent {
		if slices.Contains(changed, u) || slices.Contains(left, u) {
			t.Errorf("%s: %s should be in neither list: changed %v left %v", what, u, changed, left)
		}
	}
}
