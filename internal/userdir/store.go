// Package userdir owns the user directory: POST /user_directory/search,
// served by any generic worker from the directory tables, and the updater
// that keeps those tables in step with the events stream, run by exactly one
// instance (update_user_directory_from_worker, main by default).
//
// Who can find whom follows Synapse: a searcher sees the users who share a
// room with them and the users in public rooms (join rule public or history
// world_readable), or, with user_directory.search_all_users, every local
// user. Unlike Synapse, which indexes only the global profile, per-room
// display names are indexed per room: a user's room nickname is found by the
// people who can see that room's member list, and by nobody else.
package userdir

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"ganglion/internal/accounts"
	"ganglion/internal/storage"
)

// Store reads and writes the directory tables.
type Store struct {
	db         *storage.DB
	serverName string
}

func NewStore(db *storage.DB, serverName string) *Store {
	return &Store{db: db, serverName: serverName}
}

// maxWordRunes cuts long words, in names and in search terms alike, so a
// term still prefix-matches the word it was cut from. PostgreSQL's index
// holds each word as a tsvector lexeme, which is at most 2,047 bytes
// (migration 0028).
const maxWordRunes = 200

// splitWords is the one tokenizer of names, user ids and search terms:
// lower-cased runs of letters and digits, each cut to maxWordRunes.
func splitWords(s string) []string {
	var out []string
	for _, w := range strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
		w = strings.ToLower(w)
		if utf8.RuneCountInString(w) > maxWordRunes {
			w = string([]rune(w)[:maxWordRunes])
		}
		out = append(out, w)
	}
	return out
}

// prefixQuery is the tsquery text "every term starts some word". Terms are
// letters and digits only (splitWords), so quoting each is enough to keep
// it from being read as query syntax.
func prefixQuery(terms []string) string {
	parts := make([]string, len(terms))
	for i, t := range terms {
		parts[i] = "'" + t + "':*"
	}
	return strings.Join(parts, " & ")
}

// wordsOf is the stored searchable text of a profile: its display name's and
// user id's words, space-separated with a space at both ends, so that "a
// word starts with t" is words LIKE '% t%'.
func wordsOf(displayName *string, userID string) string {
	var ws []string
	if displayName != nil {
		ws = splitWords(*displayName)
	}
	ws = append(ws, splitWords(userID)...)
	return " " + strings.Join(ws, " ") + " "
}

func nullable(s *string) sql.NullString {
	if s == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: *s, Valid: true}
}

var _ accounts.ProfileIndex = (*Store)(nil)

// LocalProfileChanged records a local user's global profile. It runs in the
// transaction of the profile change on whichever process made it, which is
// why it is not the updater's job: the updater only learns of events, and a
// profile change of a user in no room makes none.
func (s *Store) LocalProfileChanged(ctx context.Context, tx *sql.Tx, userID string, p accounts.Profile) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO user_directory (user_id, display_name, avatar_url, words) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, avatar_url = excluded.avatar_url,
		words = excluded.words`, userID, nullable(p.DisplayName), nullable(p.AvatarURL), wordsOf(p.DisplayName, userID))
	if err != nil {
		return fmt.Errorf("update user directory profile of %s: %w", userID, err)
	}
	return nil
}

// Position is the updater's saved position on the events stream; ok is
// false when the directory has never been built.
func (s *Store) Position(ctx context.Context, q storage.Querier) (pos int64, ok bool, err error) {
	err = q.QueryRowContext(ctx, `SELECT stream_id FROM user_directory_stream_pos WHERE id = 1`).Scan(&pos)
	if storage.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("load user directory position: %w", err)
	}
	return pos, true, nil
}

func (s *Store) setPosition(ctx context.Context, tx *sql.Tx, pos int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO user_directory_stream_pos (id, stream_id) VALUES (1, $1)
		ON CONFLICT (id) DO UPDATE SET stream_id = excluded.stream_id`, pos)
	if err != nil {
		return fmt.Errorf("save user directory position: %w", err)
	}
	return nil
}

// advancePosition moves the saved position of a built directory. No row
// means an admin asked for a rebuild meanwhile (RequestRebuild): the step's
// transaction is then rolled back with errRebuildRequested rather than
// putting the row back, which would undo the request.
func (s *Store) advancePosition(ctx context.Context, tx *sql.Tx, pos int64) error {
	res, err := tx.ExecContext(ctx, `UPDATE user_directory_stream_pos SET stream_id = $1 WHERE id = 1`, pos)
	if err != nil {
		return fmt.Errorf("save user directory position: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("save user directory position: %w", err)
	} else if n == 0 {
		return errRebuildRequested
	}
	return nil
}

// RequestRebuild asks for a full rebuild of the directory from current
// state and the profiles: it removes the updater's saved position, which is
// what a directory that was never built looks like. The updater (on
// whichever instance update_user_directory_from_worker names) notices
// within a batch or rebuildPoll and rebuilds as its background work,
// serving searches from the tables as they fill; if no updater is running,
// the next one to start rebuilds. The directory's rows stay until the
// rebuild starts.
func (s *Store) RequestRebuild(ctx context.Context) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM user_directory_stream_pos`); err != nil {
		return fmt.Errorf("request a user directory rebuild: %w", err)
	}
	return nil
}

// contentOf reads a stored event's content.
func contentOf(eventJSON string) map[string]any {
	var ev struct {
		Content map[string]any `json:"content"`
	}
	_ = json.Unmarshal([]byte(eventJSON), &ev)
	return ev.Content
}

func stringField(c map[string]any, k string) *string {
	if v, ok := c[k].(string); ok {
		return &v
	}
	return nil
}

// refreshRoom sets the room's publicity from its current state. Rows are
// derived from current state, not from the event being applied, so
// applying any event twice, or out of order, converges on the same rows.
func (s *Store) refreshRoom(ctx context.Context, tx *sql.Tx, roomID string) error {
	rows, err := tx.QueryContext(ctx, `SELECT cs.type, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND cs.state_key = '' AND cs.type IN ('m.room.join_rules', 'm.room.history_visibility')`, roomID)
	if err != nil {
		return fmt.Errorf("read publicity of %s: %w", roomID, err)
	}
	public := false
	for rows.Next() {
		var typ, js string
		if err := rows.Scan(&typ, &js); err != nil {
			rows.Close()
			return fmt.Errorf("read publicity of %s: %w", roomID, err)
		}
		c := contentOf(js)
		switch {
		case typ == "m.room.join_rules" && c["join_rule"] == "public":
			public = true
		case typ == "m.room.history_visibility" && c["history_visibility"] == "world_readable":
			public = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read publicity of %s: %w", roomID, err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO user_directory_rooms (room_id, is_public) VALUES ($1, $2)
		ON CONFLICT (room_id) DO UPDATE SET is_public = excluded.is_public`, roomID, public)
	if err != nil {
		return fmt.Errorf("update publicity of %s: %w", roomID, err)
	}
	return nil
}

// refreshMember sets one user's row in a room from the room's current
// state: present with the per-room profile while joined, absent otherwise.
func (s *Store) refreshMember(ctx context.Context, tx *sql.Tx, roomID, userID string) error {
	var membership sql.NullString
	var js string
	err := tx.QueryRowContext(ctx, `SELECT cs.membership, e.json FROM current_state cs JOIN events e ON e.event_id = cs.event_id
		WHERE cs.room_id = $1 AND cs.type = 'm.room.member' AND cs.state_key = $2`, roomID, userID).Scan(&membership, &js)
	if err != nil && !storage.IsNotFound(err) {
		return fmt.Errorf("read membership of %s in %s: %w", userID, roomID, err)
	}
	if membership.String != "join" {
		if _, err := tx.ExecContext(ctx, `DELETE FROM user_directory_members WHERE room_id = $1 AND user_id = $2`, roomID, userID); err != nil {
			return fmt.Errorf("drop %s of %s from the user directory: %w", userID, roomID, err)
		}
		return nil
	}
	return s.putMember(ctx, tx, roomID, userID, contentOf(js))
}

func (s *Store) putMember(ctx context.Context, tx *sql.Tx, roomID, userID string, content map[string]any) error {
	name, avatar := stringField(content, "displayname"), stringField(content, "avatar_url")
	_, err := tx.ExecContext(ctx, `INSERT INTO user_directory_members (room_id, user_id, display_name, avatar_url, words)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, user_id) DO UPDATE SET display_name = excluded.display_name,
		avatar_url = excluded.avatar_url, words = excluded.words`,
		roomID, userID, nullable(name), nullable(avatar), wordsOf(name, userID))
	if err != nil {
		return fmt.Errorf("put %s of %s in the user directory: %w", userID, roomID, err)
	}
	return nil
}

// SearchOptions are the user_directory config switches that shape a search.
type SearchOptions struct {
	SearchAllUsers     bool
	PreferLocalUsers   bool
	ExcludeRemoteUsers bool
}

// User is one search result.
type User struct {
	UserID      string  `json:"user_id"`
	DisplayName *string `json:"display_name,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`

	score int
	local bool
}

// maxCandidateRows bounds what one search reads before ranking; past it the
// answer is limited anyway.
const maxCandidateRows = 2000

func escapeLike(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

// Search finds up to limit users visible to searcher whose display name (the
// global one, or a per-room one in a room the searcher can see the members
// of) or user id has, for every word of term, a word starting with it.
// limited reports that more matched. A user's display_name is their global
// one when that matched, else the per-room one that did, so the searcher
// sees why the user was found.
func (s *Store) Search(ctx context.Context, searcher, term string, limit int, o SearchOptions) (users []User, limited bool, err error) {
	terms := splitWords(term)
	if len(terms) == 0 || limit <= 0 {
		return []User{}, false, nil
	}
	args := []any{searcher}
	match := func(col string) string {
		if s.db.Engine() == storage.Postgres {
			args = append(args, prefixQuery(terms))
			// vector: words as a tsvector, GIN-indexed (migration 0028).
			return fmt.Sprintf(`%s @@ $%d::tsquery`, strings.TrimSuffix(col, "words")+"vector", len(args))
		}
		var b strings.Builder
		for i, t := range terms {
			if i > 0 {
				b.WriteString(" AND ")
			}
			args = append(args, "% "+escapeLike(t)+"%")
			fmt.Fprintf(&b, `%s LIKE $%d ESCAPE '\'`, col, len(args))
		}
		return b.String()
	}
	visible := `SELECT room_id FROM user_directory_members WHERE user_id = $1
		UNION SELECT room_id FROM user_directory_rooms WHERE is_public`
	q := `SELECT c.user_id, c.display_name, c.avatar_url, c.pri FROM (
		SELECT m.user_id, m.display_name, m.avatar_url, 1 AS pri FROM user_directory_members m
		WHERE m.room_id IN (` + visible + `) AND ` + match("m.words") + `
		UNION ALL
		SELECT d.user_id, d.display_name, d.avatar_url, 0 AS pri FROM user_directory d WHERE ` + match("d.words")
	if !o.SearchAllUsers {
		q += ` AND d.user_id IN (SELECT m2.user_id FROM user_directory_members m2 WHERE m2.room_id IN (` + visible + `))`
	}
	q += `) c WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.deactivated)`
	localPattern := "%" + escapeLike(":"+s.serverName)
	if o.ExcludeRemoteUsers {
		args = append(args, localPattern)
		q += fmt.Sprintf(` AND c.user_id LIKE $%d ESCAPE '\'`, len(args))
	}
	args = append(args, maxCandidateRows)
	q += fmt.Sprintf(` ORDER BY c.user_id, c.pri LIMIT $%d`, len(args))
	rows, err := s.db.Reader().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("search user directory: %w", err)
	}
	defer rows.Close()
	n := 0
	byUser := map[string]bool{}
	for rows.Next() {
		n++
		var u User
		var name, avatar sql.NullString
		var pri int
		if err := rows.Scan(&u.UserID, &name, &avatar, &pri); err != nil {
			return nil, false, fmt.Errorf("search user directory: %w", err)
		}
		if byUser[u.UserID] {
			continue // rows of one user come best (global profile) first
		}
		byUser[u.UserID] = true
		if name.Valid {
			u.DisplayName = &name.String
		}
		if avatar.Valid {
			u.AvatarURL = &avatar.String
		}
		u.local = strings.HasSuffix(u.UserID, ":"+s.serverName)
		u.score = score(terms, u)
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("search user directory: %w", err)
	}
	sort.SliceStable(users, func(i, j int) bool {
		a, b := users[i], users[j]
		if o.PreferLocalUsers && a.local != b.local {
			return a.local
		}
		if a.score != b.score {
			return a.score > b.score
		}
		if (a.DisplayName != nil) != (b.DisplayName != nil) {
			return a.DisplayName != nil
		}
		if (a.AvatarURL != nil) != (b.AvatarURL != nil) {
			return a.AvatarURL != nil
		}
		return a.UserID < b.UserID
	})
	limited = len(users) > limit || n == maxCandidateRows
	if len(users) > limit {
		users = users[:limit]
	}
	if users == nil {
		users = []User{}
	}
	return users, limited, nil
}

// score ranks a match: whole-word matches above prefix matches, and the
// display name above the user id, as Synapse's ranking roughly does.
func score(terms []string, u User) int {
	var name []string
	if u.DisplayName != nil {
		name = splitWords(*u.DisplayName)
	}
	id := splitWords(u.UserID)
	total := 0
	for _, t := range terms {
		best := 0
		for _, w := range name {
			if w == t {
				best = max(best, 4)
			} else if strings.HasPrefix(w, t) {
				best = max(best, 2)
			}
		}
		for _, w := range id {
			if w == t {
				best = max(best, 3)
			} else if strings.HasPrefix(w, t) {
				best = max(best, 1)
			}
		}
		total += best
	}
	return total
}
