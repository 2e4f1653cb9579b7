package e2e_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"

	"ganglion/internal/config"
)

// pushRulesOf returns the m.push_rules content of a sync's global account
// data ("" if absent).
func pushRulesOf(t testing.TB, resp *mautrix.RespSync) *pushrules.PushRuleset {
	t.Helper()
	for _, ev := range resp.AccountData.Events {
		if ev.Type.Type != "m.push_rules" {
			continue
		}
		var c struct {
			Global *pushrules.PushRuleset `json:"global"`
		}
		if err := json.Unmarshal(ev.Content.VeryRaw, &c); err != nil || c.Global == nil {
			t.Fatalf("m.push_rules content %s: %v", ev.Content.VeryRaw, err)
		}
		return c.Global
	}
	return nil
}

// findRule finds a rule by id in one kind's list.
func findRule(rules pushrules.PushRuleArray, ruleID string) *pushrules.PushRule {
	for _, r := range rules {
		if r.RuleID == ruleID {
			return r
		}
	}
	return nil
}

func ruleIDs(rules pushrules.PushRuleArray) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.RuleID)
	}
	return out
}

// TestPushRules: a client starting up gets the server-default rules from
// GET /pushrules/ and in its first sync's account data; its changes
// (a rule placed with before=, enabled, actions) come back in the next
// incremental sync; bad requests get the spec's errors. On the fleet the
// changes go through the push_rules stream writer (also behind the router
// and behind nginx with the generated config).
func TestPushRules(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "pushalice")
		rs, err := alice.GetPushRules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wantOverride := []string{".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
			".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif",
			".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"}
		wantUnderride := []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
			".m.rule.message", ".m.rule.encrypted"}
		if got := ruleIDs(rs.Override); !slices.Equal(got, wantOverride) {
			t.Fatalf("override = %v", got)
		}
		if got := ruleIDs(rs.Underride); !slices.Equal(got, wantUnderride) {
			t.Fatalf("underride = %v", got)
		}
		if len(rs.Content) != 1 || rs.Content[0].Pattern != "pushalice" || !rs.Content[0].Default {
			t.Fatalf("content = %+v", rs.Content)
		}

		s, first := newSyncer(t, ctx, alice, "")
		got := pushRulesOf(t, first)
		if got == nil || !slices.Equal(ruleIDs(got.Override), wantOverride) {
			t.Fatalf("initial sync m.push_rules: %+v", got)
		}

		notify := []*pushrules.PushAction{{Action: pushrules.ActionNotify}}
		err = alice.PutPushRule(ctx, "global", pushrules.OverrideRule, "org.example.a", &mautrix.ReqPutPushRule{
			Actions:    notify,
			Conditions: []*pushrules.PushCondition{{Kind: pushrules.KindEventMatch, Key: "type", Pattern: "org.example.a"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		err = alice.PutPushRule(ctx, "global", pushrules.OverrideRule, "org.example.b", &mautrix.ReqPutPushRule{
			Before: "org.example.a", Actions: []*pushrules.PushAction{},
		})
		if err != nil {
			t.Fatal(err)
		}
		wantOrder := []string{".m.rule.master", "org.example.b", "org.example.a", ".m.rule.suppress_notices"}
		s.until(t, ctx, "the new rules in m.push_rules", func(r *mautrix.RespSync) bool {
			got := pushRulesOf(t, r)
			return got != nil && len(got.Override) > 4 && slices.Equal(ruleIDs(got.Override)[:4], wantOrder)
		})
		// A sync with nothing new does not repeat m.push_rules.
		if r := s.next(t, ctx, 0); pushRulesOf(t, r) != nil {
			t.Fatal("an incremental sync without changes carried m.push_rules")
		}

		if err := alice.SetPushRuleEnabled(ctx, "global", pushrules.OverrideRule, "org.example.a", false); err != nil {
			t.Fatal(err)
		}
		if err := alice.PutPushRuleActions(ctx, "global", pushrules.UnderrideRule, ".m.rule.message",
			[]*pushrules.PushAction{{Action: pushrules.ActionDontNotify}}); err != nil {
			t.Fatal(err)
		}
		s.until(t, ctx, "enabled and actions changes in m.push_rules", func(r *mautrix.RespSync) bool {
			got := pushRulesOf(t, r)
			if got == nil {
				return false
			}
			a, msg := findRule(got.Override, "org.example.a"), findRule(got.Underride, ".m.rule.message")
			return a != nil && !a.Enabled && msg != nil && len(msg.Actions) == 1 && msg.Actions[0].Action == pushrules.ActionDontNotify
		})
		r, err := alice.GetPushRule(ctx, "global", pushrules.OverrideRule, "org.example.a")
		if err != nil || r.Enabled || r.Default {
			t.Fatalf("GET rule a = %+v, %v", r, err)
		}
		// The r0 prefix serves the same rules.
		if r := srv.do(t, ctx, "GET", "/_matrix/client/r0/pushrules/", alice.AccessToken, nil); r.status != http.StatusOK {
			t.Fatalf("r0 GET: %d", r.status)
		}

		const p = "/_matrix/client/v3/pushrules/global/"
		bad := []struct {
			method, path, body string
			status             int
			code               string
		}{
			{"PUT", p + "nokind/x", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"GET", p + "nokind/x", "", 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/x?before=missing", `{"actions":[]}`, 400, "M_UNKNOWN"},
			{"PUT", p + "override/x", `{"actions":"notify"}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/x", `{"actions":[],"conditions":[{"pattern":"x"}]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "content/x", `{"actions":[]}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/x", `{"actions":`, 400, "M_NOT_JSON"},
			{"PUT", p + "override/.m.rule.x", `{"actions":[]}`, 400, "M_INVALID_PARAM"},
			{"PUT", p + "override/x/enabled", `{"enabled":"yes"}`, 400, "M_BAD_JSON"},
			{"PUT", p + "override/missing/enabled", `{"enabled":true}`, 404, "M_NOT_FOUND"},
			{"GET", p + "override/missing", "", 404, "M_NOT_FOUND"},
			{"DELETE", p + "override/missing", "", 404, "M_NOT_FOUND"},
			{"DELETE", p + "override/.m.rule.master", "", 400, "M_UNKNOWN"},
		}
		for _, b := range bad {
			var body []byte
			if b.body != "" {
				body = []byte(b.body)
			}
			wantRawError(t, srv.do(t, ctx, b.method, b.path, alice.AccessToken, body), b.status, b.code)
		}
		// Deleting a rule of one's own works, and the next sync says so.
		if err := alice.DeletePushRule(ctx, "global", pushrules.OverrideRule, "org.example.b"); err != nil {
			t.Fatal(err)
		}
		s.until(t, ctx, "the deletion in m.push_rules", func(r *mautrix.RespSync) bool {
			got := pushRulesOf(t, r)
			return got != nil && findRule(got.Override, "org.example.b") == nil && findRule(got.Override, "org.example.a") != nil
		})
	})
}

// unread is the room's unread_notifications in a sync (nil if the room is
// not in it).
func unread(resp *mautrix.RespSync, roomID id.RoomID) *mautrix.UnreadNotificationCounts {
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		return nil
	}
	if jr.UnreadNotifications == nil {
		return &mautrix.UnreadNotificationCounts{}
	}
	return jr.UnreadNotifications
}

// TestNotificationCounts: messages in a one-to-one room notify the other
// member; a mention highlights; their read receipt (m.read, then
// m.read.private) resets the counts; thread replies are counted per thread
// when the filter asks; GET /notifications lists them newest first; the
// user's pusher gets the first message at its gateway.
func TestNotificationCounts(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "countalice")
		bob := srv.register(t, ctx, "countbob")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}})
		join(t, ctx, bob, room.String())
		// bob's phone: a pusher to a fake push gateway.
		gw := make(chan map[string]any, 100)
		gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var body map[string]any
			_ = json.NewDecoder(r.Body).Decode(&body)
			gw <- body
			_, _ = w.Write([]byte(`{"rejected":[]}`))
		}))
		defer gateway.Close()
		setPusher := srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/pushers/set", bob.AccessToken, map[string]any{
			"pushkey": "bobs-phone", "kind": "http", "app_id": "org.example.e2e", "app_display_name": "E2E",
			"device_display_name": "Phone", "lang": "en", "data": map[string]any{"url": gateway.URL + "/_matrix/push/v1/notify"},
		})
		if setPusher.status != http.StatusOK {
			t.Fatalf("set pusher: %d %s", setPusher.status, setPusher.body)
		}
		if r := srv.do(t, ctx, "GET", "/_matrix/client/v3/pushers", bob.AccessToken, nil); r.status != http.StatusOK ||
			!strings.Contains(string(r.body), "bobs-phone") {
			t.Fatalf("GET /pushers: %d %s", r.status, r.body)
		}
		bs, _ := newSyncer(t, ctx, bob, "")
		counts := func(what string, n, h int) {
			t.Helper()
			bs.until(t, ctx, what, func(r *mautrix.RespSync) bool {
				u := unread(r, room)
				return u != nil && u.NotificationCount == n && u.HighlightCount == h
			})
		}

		hello := send(t, ctx, alice, room, "hello bob-less world", "c1")
		counts("one notification", 1, 0)
		select {
		case b := <-gw:
			n, _ := b["notification"].(map[string]any)
			if n["event_id"] != hello.String() || n["room_id"] != room.String() {
				t.Fatalf("push gateway got %v, want %s", b, hello)
			}
		case <-ctx.Done():
			t.Fatal("the push gateway got nothing")
		}
		resp, err := alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{
			"msgtype": "m.text", "body": "look", "m.mentions": map[string]any{"user_ids": []string{bob.UserID.String()}},
		})
		if err != nil {
			t.Fatal(err)
		}
		mention := resp.EventID
		counts("a highlight", 2, 1)

		// The sender's own messages never count for them.
		_, first := newSyncer(t, ctx, alice, "")
		if u := unread(first, room); u == nil || u.NotificationCount != 0 {
			t.Fatalf("alice's own counts: %+v", u)
		}

		if err := bob.SendReceipt(ctx, room, mention, event.ReceiptTypeRead, nil); err != nil {
			t.Fatal(err)
		}
		counts("counts reset by m.read", 0, 0)

		last := send(t, ctx, alice, room, "more", "c2")
		counts("a new notification", 1, 0)
		if err := bob.SendReceipt(ctx, room, last, event.ReceiptTypeReadPrivate, nil); err != nil {
			t.Fatal(err)
		}
		counts("counts reset by m.read.private", 0, 0)

		// A thread reply, counted apart when the filter asks.
		_, err = alice.SendMessageEvent(ctx, room, event.EventMessage, map[string]any{
			"msgtype": "m.text", "body": "in thread",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": last.String()},
		})
		if err != nil {
			t.Fatal(err)
		}
		counts("the thread reply in the room's count", 1, 0)
		filter := `{"room":{"timeline":{"unread_thread_notifications":true}}}`
		deadline := time.Now().Add(waitLimit)
		for {
			r := srv.do(t, ctx, "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(filter), bob.AccessToken, nil)
			var body struct {
				Rooms struct {
					Join map[string]struct {
						Unread  map[string]int            `json:"unread_notifications"`
						Threads map[string]map[string]int `json:"unread_thread_notifications"`
					} `json:"join"`
				} `json:"rooms"`
			}
			if err := json.Unmarshal(r.body, &body); err != nil {
				t.Fatalf("sync: %d %s", r.status, r.body)
			}
			jr := body.Rooms.Join[room.String()]
			if jr.Unread["notification_count"] == 0 && jr.Threads[last.String()]["notification_count"] == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("thread counts: %+v", jr)
			}
		}

		// GET /notifications: newest first (the invite that brought bob in
		// is the oldest); only=highlight keeps the mention; read reflects
		// the receipts.
		var list struct {
			Notifications []struct {
				Event  map[string]any `json:"event"`
				Read   bool           `json:"read"`
				RoomID string         `json:"room_id"`
				TS     int64          `json:"ts"`
			} `json:"notifications"`
			NextToken string `json:"next_token"`
		}
		get := func(q string) {
			t.Helper()
			r := srv.do(t, ctx, "GET", "/_matrix/client/v3/notifications"+q, bob.AccessToken, nil)
			list.Notifications, list.NextToken = nil, ""
			if r.status != http.StatusOK || json.Unmarshal(r.body, &list) != nil {
				t.Fatalf("GET /notifications%s: %d %s", q, r.status, r.body)
			}
		}
		get("")
		if len(list.Notifications) != 5 || list.Notifications[4].Event["type"] != "m.room.member" || list.Notifications[0].Read || !list.Notifications[1].Read ||
			list.Notifications[2].Event["event_id"] != mention.String() || list.Notifications[0].RoomID != room.String() ||
			list.Notifications[0].TS == 0 {
			t.Fatalf("notifications: %+v", list)
		}
		get("?only=highlight")
		if len(list.Notifications) != 1 || list.Notifications[0].Event["event_id"] != mention.String() {
			t.Fatalf("highlights: %+v", list)
		}
		get("?limit=2")
		if len(list.Notifications) != 2 || list.NextToken == "" {
			t.Fatalf("first page: %+v", list)
		}
		get("?limit=2&from=" + list.NextToken)
		if len(list.Notifications) != 2 || list.Notifications[0].Event["event_id"] != mention.String() {
			t.Fatalf("second page: %+v", list)
		}
		wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v3/notifications?from=abc", bob.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", "/_matrix/client/v3/notifications?limit=-1", bob.AccessToken, nil), 400, "M_INVALID_PARAM")

		// Logging out deletes the device, and with it the pusher it set.
		other := srv.mustLogin(t, ctx, "countbob", password("countbob"))
		if _, err := bob.Logout(ctx); err != nil {
			t.Fatal(err)
		}
		if r := srv.do(t, ctx, "GET", "/_matrix/client/v3/pushers", other.AccessToken, nil); r.status != http.StatusOK ||
			strings.Contains(string(r.body), "bobs-phone") {
			t.Fatalf("pushers after logout: %d %s", r.status, r.body)
		}
	})
}

// TestPushIgnoredSender: once bob ignores alice, her messages stop
// counting for him (on the fleet the change reaches the room's persister
// through the caches stream), while carol's still count.
func TestPushIgnoredSender(t *testing.T) {
	t.Parallel()
	runDeployments(t, []string{engineSQLite, enginePostgres, engineFleet, engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "ignalice")
		bob := srv.register(t, ctx, "ignbob")
		carol := srv.register(t, ctx, "igncarol")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, room.String())
		join(t, ctx, carol, room.String())
		err := bob.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{alice.UserID.String(): map[string]any{}}})
		if err != nil {
			t.Fatal(err)
		}
		bs, _ := newSyncer(t, ctx, bob, "")
		send(t, ctx, alice, room, "you cannot hear me", "i1")
		heard := send(t, ctx, carol, room, "you can hear me", "i2")
		// alice's message precedes carol's in the stream: any sync that
		// counts carol's would count alice's too, had it notified.
		resp := bs.until(t, ctx, "carol's message counted", func(r *mautrix.RespSync) bool {
			u := unread(r, room)
			return u != nil && u.NotificationCount > 0
		})
		if u := unread(resp, room); u.NotificationCount != 1 {
			t.Fatalf("bob's count = %d, want 1 (carol's only)", u.NotificationCount)
		}
		r := srv.do(t, ctx, "GET", "/_matrix/client/v3/notifications", bob.AccessToken, nil)
		if r.status != http.StatusOK || !strings.Contains(string(r.body), heard.String()) || strings.Contains(string(r.body), "you cannot hear me") {
			t.Fatalf("notifications: %d %s", r.status, r.body)
		}
	})
}

// TestPusherInstances: with pusher_instances naming two pusher workers
// (worker_app synapse.app.pusher, processes of their own serving no client
// endpoints), behind the router, each user's notifications are sent
// exactly once, by the worker its user id shards to, with the unread count.
// Then one pusher worker is killed (SIGKILL) while notifications are in
// flight, more messages are sent while it is down, and it is restarted:
// every notification of its users still arrives (at least once; the
// gateway dedupes by event id).
func TestPusherInstances(t *testing.T) {
	t.Parallel()
	const pusher1, pusher2 = "pusher1", "pusher2"
	pushers := []string{pusher1, pusher2}
	withPushers := func(cfg map[string]any) { cfg["pusher_instances"] = pushers }
	runDeployments(t, []string{engineFleetRouter}, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		type delivery struct {
			pushkey, eventID, agent string
			unread                  int
		}
		got := make(chan delivery, 1000)
		gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var body struct {
				Notification struct {
					EventID string         `json:"event_id"`
					Counts  map[string]int `json:"counts"`
					Devices []struct {
						PushKey string `json:"pushkey"`
					} `json:"devices"`
				} `json:"notification"`
			}
			_ = json.NewDecoder(r.Body).Decode(&body)
			for _, d := range body.Notification.Devices {
				got <- delivery{d.PushKey, body.Notification.EventID, r.Header.Get("User-Agent"), body.Notification.Counts["unread"]}
			}
			_, _ = w.Write([]byte(`{"rejected":[]}`))
		}))
		defer gateway.Close()
		// A pusher worker serves no client endpoint (it has no client
		// listener at all here); main sends nothing.
		alice := srv.register(t, ctx, "pialice")
		room := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		const members = 6
		sender := map[string]string{} // pushkey → the pusher worker its user shards to
		for i := range members {
			c := srv.register(t, ctx, "pimember"+itoa(i))
			sender["key"+itoa(i)] = config.ShardFor(pushers, c.UserID.String())
			join(t, ctx, c, room.String())
			r := srv.doJSON(t, ctx, "POST", "/_matrix/client/v3/pushers/set", c.AccessToken, map[string]any{
				"pushkey": "key" + itoa(i), "kind": "http", "app_id": "org.example.e2e", "app_display_name": "E2E",
				"device_display_name": "Phone", "lang": "en", "data": map[string]any{"url": gateway.URL + "/_matrix/push/v1/notify"},
			})
			if r.status != http.StatusOK {
				t.Fatalf("set pusher: %d %s", r.status, r.body)
			}
		}
		seen := map[string]int{} // "pushkey event" → deliveries
		receive := func(what string, want func() bool) {
			t.Helper()
			for !want() {
				select {
				case d := <-got:
					if w := "Ganglion (" + sender[d.pushkey] + ")"; d.agent != w {
						t.Fatalf("%s: %s sent by %q, want %q", what, d.pushkey, d.agent, w)
					}
					if d.unread != 1 {
						t.Fatalf("%s: %s: unread count %d, want 1 (one room with unread notifications)", what, d.pushkey, d.unread)
					}
					seen[d.pushkey+" "+d.eventID]++
				case <-ctx.Done():
					t.Fatalf("%s: not every notification arrived: %v", what, seen)
				}
			}
		}
		allOf := func(evs []id.EventID) func() bool {
			return func() bool {
				for _, ev := range evs {
					for i := range members {
						if seen["key"+itoa(i)+" "+ev.String()] == 0 {
							return false
						}
					}
				}
				return true
			}
		}
		var evs []id.EventID
		for round := range 2 {
			evs = append(evs, send(t, ctx, alice, room, "round "+itoa(round), "pi"+itoa(round)))
			receive("round "+itoa(round), allOf(evs))
		}
		for s, n := range seen {
			if n != 1 {
				t.Fatalf("%q delivered %d times (%v)", s, n, seen)
			}
		}
		if len(seen) != 2*members {
			t.Fatalf("deliveries: %v", seen)
		}

		// Kill the pusher worker of member 0 mid-stream: right after a
		// burst of sends, while its notifications are going out.
		victim := sender["key0"]
		for i := range 5 {
			evs = append(evs, send(t, ctx, alice, room, "before the kill "+itoa(i), "pk"+itoa(i)))
		}
		srv.fleet.killProc(t, victim)
		for i := range 5 {
			evs = append(evs, send(t, ctx, alice, room, "while down "+itoa(i), "pd"+itoa(i)))
		}
		srv.fleet.restartProc(t, victim)
		for i := range 3 {
			evs = append(evs, send(t, ctx, alice, room, "after the restart "+itoa(i), "pr"+itoa(i)))
		}
		receive("after "+victim+" was killed and restarted", allOf(evs))
		if len(seen) != len(evs)*members {
			t.Fatalf("%d distinct deliveries for %d events to %d members: %v", len(seen), len(evs), members, seen)
		}
	}, withPushers)
}
