package rooms

import (
	"context"
	"strings"
)

// bundle adds the bundled aggregations (spec: "Aggregations of child
// events") to out[i].Unsigned["m.relations"] for each served event evs[i]
// that has children: the thread summary of a thread root, the latest edit
// of an edited event, the references to an event. One query for the whole
// page finds them and one more loads the latest replies and edits, so a
// page costs the same whatever its length. Since spec v1.7 the server
// bundles the whole latest edit and leaves the original's content as it
// is (clients apply the edit).
//
// State events and redacted events are not considered: neither is edited
// or threaded in practice, and state is formatted in bulk (sync's state,
// member lists), where the query would be wasted.
func (f *Formatter) bundle(ctx context.Context, evs []*StoredEvent, out []ClientEvent) error {
	return f.bundleAt(ctx, evs, out, 0)
}

// bundleAt is bundle for events at a nesting depth: the latest event of a
// thread summary (depth 1) gets its own aggregations (its latest edit,
// which clients show in the thread preview), one query for all summaries
// of the page; deeper nesting is not needed, as a thread reply is not a
// thread root.
func (f *Formatter) bundleAt(ctx context.Context, evs []*StoredEvent, out []ClientEvent, depth int) error {
	if f.s == nil || depth > 1 {
		return nil
	}
	var parents []string
	byID := map[string]int{}
	for i, se := range evs {
		if se.Event.IsState() || se.RedactedBy != "" {
			continue
		}
		id := se.Event.EventID()
		if _, dup := byID[id]; !dup {
			parents = append(parents, id)
		}
		byID[id] = i
	}
	if len(parents) == 0 {
		return nil
	}
	rows, err := f.store.aggregations(ctx, parents, f.userID)
	if err != nil || len(rows) == 0 {
		return err
	}
	type agg struct {
		thread  *aggregationRow
		edit    *aggregationRow
		refRows []*aggregationRow
	}
	aggs := map[string]*agg{}
	var need []string
	for k := range rows {
		a := &rows[k]
		orig := evs[byID[a.parent]].Event
		g := aggs[a.parent]
		if g == nil {
			g = &agg{}
			aggs[a.parent] = g
		}
		switch a.relType {
		case "m.thread":
			g.thread = a
			need = append(need, a.eventID)
		case "m.reference":
			g.refRows = append(g.refRows, a)
		case "m.replace":
			// Spec: an edit counts only if it comes from the original's
			// sender, has its type, and the original is not itself an
			// edit; the latest by origin_server_ts (then event id) wins.
			if a.sender != orig.Sender() || a.typ != orig.Type() {
				continue
			}
			if r, ok := relationOf(orig); ok && r.RelType == "m.replace" {
				continue
			}
			if g.edit == nil || a.ts > g.edit.ts || (a.ts == g.edit.ts && strings.Compare(a.eventID, g.edit.eventID) > 0) {
				g.edit = a
			}
		}
	}
	for _, g := range aggs {
		if g.edit != nil {
			need = append(need, g.edit.eventID)
		}
	}
	loaded, err := f.store.EventsByID(ctx, need)
	if err != nil {
		return err
	}
	// A latest reply or an edit the viewer may not see is left out.
	vis := map[string]*Visibility{}
	roomVis := func(room string) (*Visibility, error) {
		v := vis[room]
		if v == nil {
			var err error
			if v, err = f.s.VisibilityFor(ctx, room, f.userID); err != nil {
				return nil, err
			}
			vis[room] = v
		}
		return v, nil
	}
	visible := func(se *StoredEvent) (bool, error) {
		v, err := roomVis(se.Event.RoomID())
		if err != nil {
			return false, err
		}
		return v.CanSee(se), nil
	}
	// The latest replies, formatted with their own aggregations.
	var latestEvs []*StoredEvent
	for _, g := range aggs {
		if t := g.thread; t != nil {
			if se := loaded[t.eventID]; se != nil {
				ok, err := visible(se)
				if err != nil {
					return err
				}
				if ok {
					latestEvs = append(latestEvs, se)
				}
			}
		}
	}
	latestOut := make([]ClientEvent, len(latestEvs))
	latestByID := map[string]*ClientEvent{}
	for k, se := range latestEvs {
		latestOut[k] = f.one(se, nil)
		latestByID[se.Event.EventID()] = &latestOut[k]
	}
	if err := f.bundleAt(ctx, latestEvs, latestOut, depth+1); err != nil {
		return err
	}
	for parent, g := range aggs {
		i := byID[parent]
		rels := map[string]any{}
		if t := g.thread; t != nil {
			summary := map[string]any{
				"count":                     t.count,
				"current_user_participated": t.mine || evs[i].Event.Sender() == f.userID,
			}
			if ce := latestByID[t.eventID]; ce != nil {
				summary["latest_event"] = *ce
			}
			rels["m.thread"] = summary
		}
		if g.edit != nil {
			if se := loaded[g.edit.eventID]; se != nil && se.RedactedBy == "" {
				ok, err := visible(se)
				if err != nil {
					return err
				}
				if ok {
					rels["m.replace"] = f.one(se, nil)
				}
			}
		}
		// References the viewer may not see are left out; the reference
		// rows carry their positions, which is all the check needs.
		var chunk []map[string]string
		for _, a := range g.refRows {
			v, err := roomVis(evs[i].Event.RoomID())
			if err != nil {
				return err
			}
			if v.CanSeeAt(a.pos) {
				chunk = append(chunk, map[string]string{"event_id": a.eventID})
			}
		}
		if len(chunk) > 0 {
			rels["m.reference"] = map[string]any{"chunk": chunk}
		}
		if len(rels) > 0 {
			out[i].Unsigned["m.relations"] = rels
		}
	}
	return nil
}
