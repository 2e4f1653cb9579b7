package e2e_test

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"ganglion/internal/testutil"
)

// relationDeployments: the monoliths and the fleet through its router (the
// routing table sends /relations and /threads to generic workers).
var relationDeployments = []string{engineSQLite, enginePostgres, engineFleetRouter}

// getJSON GETs path as token and decodes the 200 answer.
func getJSON(t testing.TB, ctx context.Context, srv *server, token, path string) map[string]any {
	t.Helper()
	r := srv.do(t, ctx, "GET", path, token, nil)
	if r.status != 200 {
		t.Fatalf("GET %s: %d %s", path, r.status, truncate(r.body))
	}
	return r.object(t)
}

func v1Path(segments ...string) string {
	p := "/_matrix/client/v1"
	for _, s := range segments {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// sendRaw sends an event of type typ with content and returns its id.
func sendRaw(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, typ string, content map[string]any) id.EventID {
	t.Helper()
	resp, err := c.SendMessageEvent(ctx, roomID, event.Type{Type: typ, Class: event.MessageEventType}, content)
	if err != nil {
		t.Fatalf("%s: send %s: %v", c.UserID, typ, err)
	}
	return resp.EventID
}

func threadReply(t testing.TB, ctx context.Context, c *mautrix.Client, roomID id.RoomID, root id.EventID, body string) id.EventID {
	t.Helper()
	return sendRaw(t, ctx, c, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": body,
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
}

// chunkIDs are the event ids of a response's chunk.
func chunkIDs(m map[string]any, key string) []string {
	var out []string
	arr, _ := m[key].([]any)
	for _, e := range arr {
		if ev, ok := e.(map[string]any); ok {
			id, _ := ev["event_id"].(string)
			out = append(out, id)
		}
	}
	return out
}

// findRaw finds an event by id in a list of raw events.
func findRaw(list []any, eventID id.EventID) map[string]any {
	for _, e := range list {
		if ev, ok := e.(map[string]any); ok && ev["event_id"] == eventID.String() {
			return ev
		}
	}
	return nil
}

// relationsOf is an event's unsigned["m.relations"] (nil if none).
func relationsOf(ev map[string]any) map[string]any {
	u, _ := ev["unsigned"].(map[string]any)
	r, _ := u["m.relations"].(map[string]any)
	return r
}

// threadSummary is the bundled thread summary of ev.
type threadSummary struct {
	count        int
	latest       string
	participated bool
	ok           bool
}

func summaryOf(ev map[string]any) threadSummary {
	th, _ := relationsOf(ev)["m.thread"].(map[string]any)
	if th == nil {
		return threadSummary{}
	}
	n, _ := th["count"].(float64)
	latest, _ := th["latest_event"].(map[string]any)
	lid, _ := latest["event_id"].(string)
	p, _ := th["current_user_participated"].(bool)
	return threadSummary{count: int(n), latest: lid, participated: p, ok: true}
}

// messagesEvent finds eventID in the room's newest messages as c sees them.
func messagesEvent(t testing.TB, ctx context.Context, srv *server, c *mautrix.Client, roomID id.RoomID, eventID id.EventID) map[string]any {
	t.Helper()
	m := getJSON(t, ctx, srv, c.AccessToken, clientPath("rooms", roomID.String(), "messages")+"?dir=b&limit=100")
	chunk, _ := m["chunk"].([]any)
	ev := findRaw(chunk, eventID)
	if ev == nil {
		t.Fatalf("%s not in /messages", eventID)
	}
	return ev
}

// syncEvent finds eventID in an initial sync's timeline of roomID, waiting
// until the summary matches want (on a fleet, the syncing worker may be
// briefly behind the persister).
func wantSyncSummary(t testing.TB, ctx context.Context, srv *server, c *mautrix.Client, roomID id.RoomID, root id.EventID, want threadSummary) {
	t.Helper()
	filter := url.QueryEscape(`{"room":{"timeline":{"limit":100}}}`)
	var got threadSummary
	testutil.Eventually(t, 10*time.Second, "thread summary in /sync", func() bool {
		m := getJSON(t, ctx, srv, c.AccessToken, "/_matrix/client/v3/sync?filter="+filter)
		rooms, _ := m["rooms"].(map[string]any)
		join, _ := rooms["join"].(map[string]any)
		room, _ := join[roomID.String()].(map[string]any)
		tl, _ := room["timeline"].(map[string]any)
		evs, _ := tl["events"].([]any)
		ev := findRaw(evs, root)
		if ev == nil {
			return false
		}
		got = summaryOf(ev)
		return got == want
	})
}

func TestRelationsThreadsAndAggregations(t *testing.T) {
	runDeployments(t, relationDeployments, func(t *testing.T, srv *server) {
		ctx := testContext(t)
		alice := srv.register(t, ctx, "alice")
		bob := srv.register(t, ctx, "bob")
		carol := srv.register(t, ctx, "carol")
		dave := srv.register(t, ctx, "dave")
		roomID := createRoom(t, ctx, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		join(t, ctx, bob, roomID.String())
		join(t, ctx, carol, roomID.String())

		root := send(t, ctx, alice, roomID, "root", "")
		r1 := threadReply(t, ctx, alice, roomID, root, "r1")
		ev := messagesEvent(t, ctx, srv, carol, roomID, root)
		if got, want := summaryOf(ev), (threadSummary{count: 1, latest: r1.String(), ok: true}); got != want {
			t.Fatalf("after one reply, carol sees summary %+v, want %+v", got, want)
		}
		wantSyncSummary(t, ctx, srv, carol, roomID, root, threadSummary{count: 1, latest: r1.String(), ok: true})

		r2 := threadReply(t, ctx, bob, roomID, root, "r2")
		r3 := threadReply(t, ctx, bob, roomID, root, "r3")
		want := threadSummary{count: 3, latest: r3.String(), participated: true, ok: true}
		if got := summaryOf(messagesEvent(t, ctx, srv, bob, roomID, root)); got != want {
			t.Fatalf("bob's summary %+v, want %+v", got, want)
		}
		// Alice sent the root: she participates without replying later.
		if got := summaryOf(messagesEvent(t, ctx, srv, alice, roomID, root)); !got.participated || got.count != 3 {
			t.Fatalf("alice's summary %+v, want participated with 3 replies", got)
		}
		wantSyncSummary(t, ctx, srv, carol, roomID, root, threadSummary{count: 3, latest: r3.String(), ok: true})

		// The latest reply carries its own latest edit.
		r3edit := sendRaw(t, ctx, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* r3 fixed",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "r3 fixed"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": r3}})
		th, _ := relationsOf(messagesEvent(t, ctx, srv, carol, roomID, root))["m.thread"].(map[string]any)
		latest, _ := th["latest_event"].(map[string]any)
		if e, _ := relationsOf(latest)["m.replace"].(map[string]any); e["event_id"] != r3edit.String() {
			t.Fatalf("thread summary's latest_event lacks its edit: %v", latest)
		}
		if got := summaryOf(messagesEvent(t, ctx, srv, carol, roomID, root)); got.count != 3 {
			t.Fatalf("an edit of a reply counted as a reply: %+v", got)
		}

		// /context and /event bundle too.
		ctxResp := getJSON(t, ctx, srv, carol.AccessToken, clientPath("rooms", roomID.String(), "context", root.String())+"?limit=2")
		if got := summaryOf(ctxResp["event"].(map[string]any)); got.count != 3 || got.latest != r3.String() {
			t.Fatalf("/context summary %+v", got)
		}

		// Edits: the latest edit by the original sender is bundled whole,
		// the original's content stays as it was (spec v1.7), and another
		// user's "edit" is no edit.
		edit := sendRaw(t, ctx, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* root edited",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "root edited"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
		sendRaw(t, ctx, bob, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* hijack",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "hijack"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": root}})
		ref := sendRaw(t, ctx, carol, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "see above",
			"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
		got := getJSON(t, ctx, srv, carol.AccessToken, clientPath("rooms", roomID.String(), "event", root.String()))
		if body := got["content"].(map[string]any)["body"]; body != "root" {
			t.Fatalf("/event served content body %v, want the original's", body)
		}
		rels := relationsOf(got)
		repl, _ := rels["m.replace"].(map[string]any)
		if repl["event_id"] != edit.String() || repl["sender"] != alice.UserID.String() {
			t.Fatalf("m.replace bundle %v, want alice's edit %s", repl, edit)
		}
		if nc, _ := repl["content"].(map[string]any)["m.new_content"].(map[string]any); nc["body"] != "root edited" {
			t.Fatalf("m.replace bundle is not the whole edit event: %v", repl)
		}
		refs, _ := rels["m.reference"].(map[string]any)
		if ids := chunkIDs(refs, "chunk"); !slices.Equal(ids, []string{ref.String()}) {
			t.Fatalf("m.reference chunk %v, want [%s]", ids, ref)
		}

		// /relations pages: newest first, next_batch until the end.
		relPath := v1Path("rooms", roomID.String(), "relations", root.String(), "m.thread")
		p1 := getJSON(t, ctx, srv, carol.AccessToken, relPath+"?limit=2")
		if ids := chunkIDs(p1, "chunk"); !slices.Equal(ids, []string{r3.String(), r2.String()}) {
			t.Fatalf("first page %v, want [r3 r2]", ids)
		}
		next, _ := p1["next_batch"].(string)
		if next == "" {
			t.Fatalf("first page has no next_batch: %v", p1)
		}
		p2 := getJSON(t, ctx, srv, carol.AccessToken, relPath+"?limit=2&from="+url.QueryEscape(next))
		if ids := chunkIDs(p2, "chunk"); !slices.Equal(ids, []string{r1.String()}) {
			t.Fatalf("second page %v, want [r1]", ids)
		}
		if p2["next_batch"] != nil || p2["prev_batch"] != next {
			t.Fatalf("last page: next_batch %v (want none), prev_batch %v (want %s)", p2["next_batch"], p2["prev_batch"], next)
		}
		// Forwards, bounded by to: the events up to the first page's end.
		fw := getJSON(t, ctx, srv, carol.AccessToken, relPath+"?dir=f&limit=10&to="+url.QueryEscape(next))
		if ids := chunkIDs(fw, "chunk"); !slices.Equal(ids, []string{r1.String()}) {
			t.Fatalf("forwards up to %s: %v, want [r1]", next, ids)
		}
		fw = getJSON(t, ctx, srv, carol.AccessToken, relPath+"?dir=f&limit=2")
		if ids := chunkIDs(fw, "chunk"); !slices.Equal(ids, []string{r1.String(), r2.String()}) {
			t.Fatalf("forwards: %v, want [r1 r2]", ids)
		}
		// Through mautrix, filtered by event type.
		mr, err := carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread,
			EventType: event.EventMessage, Limit: 10})
		if err != nil || len(mr.Chunk) != 3 {
			t.Fatalf("GetRelations m.thread/m.room.message: %v, %d events", err, len(mr.Chunk))
		}
		mr, err = carol.GetRelations(ctx, roomID, root, &mautrix.ReqGetRelations{RelationType: event.RelThread,
			EventType: event.EventReaction, Limit: 10})
		if err != nil || len(mr.Chunk) != 0 {
			t.Fatalf("GetRelations m.thread/m.reaction: %v, %d events", err, len(mr.Chunk))
		}
		// All relations, a sync token as from.
		sync := getJSON(t, ctx, srv, carol.AccessToken, "/_matrix/client/v3/sync?timeout=0")
		all := getJSON(t, ctx, srv, carol.AccessToken, v1Path("rooms", roomID.String(), "relations", root.String())+
			"?limit=50&from="+url.QueryEscape(sync["next_batch"].(string)))
		if n := len(chunkIDs(all, "chunk")); n != 6 { // 3 replies, 2 edits, 1 reference
			t.Fatalf("all relations from a sync token: %d events, want 6: %v", n, chunkIDs(all, "chunk"))
		}

		// recurse follows children of children.
		reaction := sendRaw(t, ctx, carol, roomID, "m.reaction", map[string]any{
			"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": r1, "key": "👍"}})
		flat := getJSON(t, ctx, srv, carol.AccessToken, v1Path("rooms", roomID.String(), "relations", root.String())+"?limit=50")
		if slices.Contains(chunkIDs(flat, "chunk"), reaction.String()) {
			t.Fatalf("a grandchild without recurse")
		}
		for _, param := range []string{"recurse", "org.matrix.msc3981.recurse"} {
			deep := getJSON(t, ctx, srv, carol.AccessToken, v1Path("rooms", roomID.String(), "relations", root.String())+"?limit=50&"+param+"=true")
			if !slices.Contains(chunkIDs(deep, "chunk"), reaction.String()) || deep["recursion_depth"] == nil {
				t.Fatalf("%s=true: %v", param, deep)
			}
		}

		// A redacted reply leaves the thread.
		if _, err := bob.RedactEvent(ctx, roomID, r3); err != nil {
			t.Fatalf("redact r3: %v", err)
		}
		if got, want := summaryOf(messagesEvent(t, ctx, srv, carol, roomID, root)), (threadSummary{count: 2, latest: r2.String(), ok: true}); got != want {
			t.Fatalf("after redacting r3: %+v, want %+v", got, want)
		}

		// /threads: latest reply first, include=participated, pagination.
		root2 := send(t, ctx, carol, roomID, "root2", "")
		threadReply(t, ctx, bob, roomID, root2, "on root2")
		thPath := v1Path("rooms", roomID.String(), "threads")
		th = getJSON(t, ctx, srv, bob.AccessToken, thPath)
		if ids := chunkIDs(th, "chunk"); !slices.Equal(ids, []string{root2.String(), root.String()}) {
			t.Fatalf("threads %v, want [root2 root]", ids)
		}
		if s := summaryOf(findRaw(th["chunk"].([]any), root2)); s.count != 1 {
			t.Fatalf("threads chunk lacks the summary: %+v", s)
		}
		th = getJSON(t, ctx, srv, alice.AccessToken, thPath+"?include=participated")
		if ids := chunkIDs(th, "chunk"); !slices.Equal(ids, []string{root.String()}) {
			t.Fatalf("alice's participated threads %v, want [root]", ids)
		}
		th = getJSON(t, ctx, srv, bob.AccessToken, thPath+"?limit=1")
		tnext, _ := th["next_batch"].(string)
		if ids := chunkIDs(th, "chunk"); !slices.Equal(ids, []string{root2.String()}) || tnext == "" {
			t.Fatalf("threads page 1: %v next %q", ids, tnext)
		}
		th = getJSON(t, ctx, srv, bob.AccessToken, thPath+"?limit=1&from="+url.QueryEscape(tnext))
		if ids := chunkIDs(th, "chunk"); !slices.Equal(ids, []string{root.String()}) {
			t.Fatalf("threads page 2: %v", ids)
		}

		// A reference made after a user left is not bundled for them.
		frank := srv.register(t, ctx, "frank")
		join(t, ctx, frank, roomID.String())
		if _, err := frank.LeaveRoom(ctx, roomID); err != nil {
			t.Fatalf("frank leaves: %v", err)
		}
		ref2 := sendRaw(t, ctx, alice, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": "see above too",
			"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": root}})
		seen := func(c *mautrix.Client) []string {
			ev := getJSON(t, ctx, srv, c.AccessToken, clientPath("rooms", roomID.String(), "event", root.String()))
			refs, _ := relationsOf(ev)["m.reference"].(map[string]any)
			return chunkIDs(refs, "chunk")
		}
		if got := seen(frank); !slices.Equal(got, []string{ref.String()}) {
			t.Fatalf("frank, gone, sees references %v, want only [%s]", got, ref)
		}
		if got := seen(carol); !slices.Equal(got, []string{ref.String(), ref2.String()}) {
			t.Fatalf("carol sees references %v, want [%s %s]", got, ref, ref2)
		}

		// Threads do not nest (spec: validation of m.thread relationships).
		_, err = carol.SendMessageEvent(ctx, roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "nested",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": r1}})
		wantMatrixError(t, err, 400, "M_UNKNOWN")

		// Bad input.
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", "$nope"), carol.AccessToken, nil), 404, "M_NOT_FOUND")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", "!nope:"+serverName, "relations", root.String()), carol.AccessToken, nil), 404, "M_NOT_FOUND")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", root.String()), dave.AccessToken, nil), 404, "M_NOT_FOUND")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", root.String())+"?dir=x", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", root.String())+"?limit=-1", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", root.String())+"?recurse=maybe", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", v1Path("rooms", roomID.String(), "relations", root.String())+"?from=garbage", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", thPath+"?include=some", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", thPath+"?limit=x", carol.AccessToken, nil), 400, "M_INVALID_PARAM")
		wantRawError(t, srv.do(t, ctx, "GET", thPath, dave.AccessToken, nil), 403, "M_FORBIDDEN")
		if r := srv.do(t, ctx, "GET", thPath, "", nil); r.status != 401 {
			t.Fatalf("/threads without a token: %d", r.status)
		}
	})
}
