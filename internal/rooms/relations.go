package rooms

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"ganglion/internal/events"
	"ganglion/internal/mxhttp"
	"ganglion/internal/storage"
)

// Relations (spec: "Forming relationships between events", threads, edits,
// references) live in rooms rather than a package of their own: the
// event_relations table is an index of the events table written by the
// persister in the event's own transaction, and it is read by the
// Formatter for every event this package serves (bundled aggregations) and
// by /relations and /threads, which need the same event scanning, history
// visibility and pagination tokens as /messages. A separate package would
// have to reach back into all of these.

// relation is an event's m.relates_to.
type relation struct {
	EventID string `json:"event_id"`
	RelType string `json:"rel_type"`
	Key     string `json:"key"`
}

var relatesToKey = []byte(`"m.relates_to"`)

// relationOf reads ev's m.relates_to; ok is false for events with none (or
// one without an event id and a rel_type, such as a plain rich reply's
// m.in_reply_to).
func relationOf(ev *events.Event) (relation, bool) { return relationOfContent(ev.Content()) }

func relationOfContent(content json.RawMessage) (relation, bool) {
	// Most events have no relation: skip the decoding.
	if !bytes.Contains(content, relatesToKey) {
		return relation{}, false
	}
	var c struct {
		RelatesTo json.RawMessage `json:"m.relates_to"`
	}
	if json.Unmarshal(content, &c) != nil || len(c.RelatesTo) == 0 {
		return relation{}, false
	}
	// Each field on its own: a key of the wrong type must not hide the
	// others.
	var raw map[string]json.RawMessage
	if json.Unmarshal(c.RelatesTo, &raw) != nil {
		return relation{}, false
	}
	var r relation
	if json.Unmarshal(raw["event_id"], &r.EventID) != nil || json.Unmarshal(raw["rel_type"], &r.RelType) != nil {
		return relation{}, false
	}
	if r.EventID == "" || r.RelType == "" {
		return relation{}, false
	}
	_ = json.Unmarshal(raw["key"], &r.Key) // only annotations have one
	return r, true
}

// checkThreadRoot refuses a thread reply whose root itself relates to an
// event (spec: "Validation of m.thread relationships": threads do not
// nest or start off edits, reactions or other replies; 400 M_UNKNOWN, as
// no specific code exists). Only events with an m.thread relation pay for
// the lookup of their root; an unknown root is let through.
func (s *Service) checkThreadRoot(ctx context.Context, content json.RawMessage) error {
	rel, ok := relationOfContent(content)
	if !ok || rel.RelType != "m.thread" {
		return nil
	}
	root, err := s.store.Event(ctx, rel.EventID)
	if err != nil || root == nil {
		return err
	}
	if _, ok := relationOf(root.Event); ok && root.RedactedBy == "" {
		return mxhttp.WithCode(400, "M_UNKNOWN", "Cannot start a thread from an event with a relation")
	}
	return nil
}

// insertRelation records ev's relation, if it has one. It runs in the
// persister's transaction; events without m.relates_to cost a byte search.
func insertRelation(ctx context.Context, tx *sql.Tx, ev *events.Event, so int64) error {
	rel, ok := relationOf(ev)
	if !ok {
		return nil
	}
	var key sql.NullString
	if rel.Key != "" {
		key = sql.NullString{String: rel.Key, Valid: true}
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO event_relations (event_id, relates_to_id, rel_type, aggregation_key, type, sender,
		room_id, stream_ordering, origin_server_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		ev.EventID(), rel.EventID, rel.RelType, key, ev.Type(), ev.Sender(), ev.RoomID(), so, ev.OriginServerTS())
	if err != nil {
		return fmt.Errorf("insert relation of %s: %w", ev.EventID(), err)
	}
	return nil
}

// RelationsQuery selects children of one event.
type RelationsQuery struct {
	RelType   string // "" for any
	EventType string // "" for any; only with RelType
	// Depth is how many levels of children to follow: 1 for direct
	// children, more for recurse.
	Depth     int
	From, To  int64 // positions; To < 0 is unbounded; From < 0 is "newest" when Backwards
	Backwards bool
	Limit     int
}

// relatedIDs pages over the children of parent in roomID, ordered by
// stream position: backwards returns positions <= From (or all, From < 0)
// and > To; forwards positions > From and <= To.
func (s *Store) relatedIDs(ctx context.Context, roomID, parent string, q RelationsQuery) ([]string, []int64, error) {
	args := []any{parent, q.Depth, roomID}
	var cond strings.Builder
	if q.RelType != "" {
		args = append(args, q.RelType)
		fmt.Fprintf(&cond, " AND r.rel_type = $%d", len(args))
		if q.EventType != "" {
			args = append(args, q.EventType)
			fmt.Fprintf(&cond, " AND r.type = $%d", len(args))
		}
	}
	order := "ASC"
	if q.Backwards {
		order = "DESC"
		if q.From >= 0 {
			args = append(args, q.From)
			fmt.Fprintf(&cond, " AND r.stream_ordering <= $%d", len(args))
		}
		if q.To >= 0 {
			args = append(args, q.To)
			fmt.Fprintf(&cond, " AND r.stream_ordering > $%d", len(args))
		}
	} else {
		args = append(args, max(q.From, 0))
		fmt.Fprintf(&cond, " AND r.stream_ordering > $%d", len(args))
		if q.To >= 0 {
			args = append(args, q.To)
			fmt.Fprintf(&cond, " AND r.stream_ordering <= $%d", len(args))
		}
	}
	args = append(args, q.Limit)
	// The walk is bounded by depth, so a cycle (impossible for local
	// events, which relate only to existing ones) cannot loop.
	query := `WITH RECURSIVE tree (event_id, depth) AS (
			SELECT event_id, 1 FROM event_relations WHERE relates_to_id = $1
			UNION ALL
			SELECT c.event_id, t.depth + 1 FROM event_relations c JOIN tree t ON c.relates_to_id = t.event_id WHERE t.depth < $2
		)
		SELECT DISTINCT r.event_id, r.stream_ordering FROM event_relations r JOIN tree t ON t.event_id = r.event_id
		WHERE r.room_id = $3` + cond.String() + `
		ORDER BY r.stream_ordering ` + order + ` LIMIT $` + fmt.Sprint(len(args))
	rows, err := s.db.Reader().QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("page relations of %s: %w", parent, err)
	}
	defer rows.Close()
	var ids []string
	var pos []int64
	for rows.Next() {
		var id string
		var so int64
		if err := rows.Scan(&id, &so); err != nil {
			return nil, nil, fmt.Errorf("page relations of %s: %w", parent, err)
		}
		ids, pos = append(ids, id), append(pos, so)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("page relations of %s: %w", parent, err)
	}
	return ids, pos, nil
}

// aggregationRow is one line of the bundled-aggregations query: an edit or
// a reference (one row per child), or a thread's summary (one row per
// root).
type aggregationRow struct {
	parent, relType, eventID, sender, typ string
	ts                                    int64 // origin_server_ts of an edit
	pos                                   int64 // stream position of an edit or a reference
	count                                 int64 // replies of a thread
	mine                                  bool  // the viewer replied in the thread
}

// aggregations loads, in one query, what the bundled aggregations of the
// given events need: their edits and references, and per thread root the
// number of replies, the latest reply and whether userID replied.
func (s *Store) aggregations(ctx context.Context, parents []string, userID string) ([]aggregationRow, error) {
	var out []aggregationRow
	const chunk = 200
	for i := 0; i < len(parents); i += chunk {
		part := parents[i:min(i+chunk, len(parents))]
		args, in := storage.AppendIn([]any{userID}, part)
		rows, err := s.db.Reader().QueryContext(ctx, `
			SELECT relates_to_id, rel_type, event_id, sender, type, origin_server_ts, stream_ordering, 0, 0
			FROM event_relations WHERE relates_to_id IN (`+in+`) AND rel_type IN ('m.replace', 'm.reference')
			UNION ALL
			SELECT r.relates_to_id, 'm.thread',
				(SELECT l.event_id FROM event_relations l WHERE l.relates_to_id = r.relates_to_id AND l.rel_type = 'm.thread'
					ORDER BY l.stream_ordering DESC LIMIT 1),
				'', '', 0, 0, count(*), max(CASE WHEN r.sender = $1 THEN 1 ELSE 0 END)
			FROM event_relations r WHERE r.relates_to_id IN (`+in+`) AND r.rel_type = 'm.thread'
			GROUP BY r.relates_to_id`, args...)
		if err != nil {
			return nil, fmt.Errorf("load aggregations: %w", err)
		}
		for rows.Next() {
			var a aggregationRow
			var mine int64
			if err := rows.Scan(&a.parent, &a.relType, &a.eventID, &a.sender, &a.typ, &a.ts, &a.pos, &a.count, &mine); err != nil {
				rows.Close()
				return nil, fmt.Errorf("load aggregations: %w", err)
			}
			a.mine = mine != 0
			out = append(out, a)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("load aggregations: %w", err)
		}
	}
	return out, nil
}

// threadRoots pages over a room's threads, newest latest reply first:
// roots whose latest reply is at or before from (from < 0: any), with
// userID's participation (they sent the root or a reply) when
// participated.
func (s *Store) threadRoots(ctx context.Context, roomID string, from int64, participated bool, userID string, limit int) ([]string, []int64, error) {
	args := []any{roomID, limit}
	having := ""
	if from >= 0 {
		args = append(args, from)
		having = fmt.Sprintf(" HAVING max(r.stream_ordering) <= $%d", len(args))
	}
	if participated {
		args = append(args, userID)
		n := len(args)
		cond := fmt.Sprintf(`(max(CASE WHEN r.sender = $%d THEN 1 ELSE 0 END) = 1
			OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = r.relates_to_id AND e.sender = $%d))`, n, n)
		if having == "" {
			having = " HAVING " + cond
		} else {
			having += " AND " + cond
		}
	}
	rows, err := s.db.Reader().QueryContext(ctx, `SELECT r.relates_to_id, max(r.stream_ordering) FROM event_relations r
		WHERE r.room_id = $1 AND r.rel_type = 'm.thread'
		GROUP BY r.relates_to_id`+having+`
		ORDER BY max(r.stream_ordering) DESC LIMIT $2`, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list threads of %s: %w", roomID, err)
	}
	defer rows.Close()
	var ids []string
	var latest []int64
	for rows.Next() {
		var id string
		var so int64
		if err := rows.Scan(&id, &so); err != nil {
			return nil, nil, fmt.Errorf("list threads of %s: %w", roomID, err)
		}
		ids, latest = append(ids, id), append(latest, so)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("list threads of %s: %w", roomID, err)
	}
	return ids, latest, nil
}
