package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Issue 14's scenarios, run only when named: their setup (100,000 messages,
// 10,000 users) is far larger than their measured phase.
const (
	scSearch  = "search"
	scUserdir = "userdir"
)

// wordSeed fixes the vocabulary and the texts: runs are comparable.
const wordSeed = 14

// searchAnswer is the part of POST /search's answer the scenario checks.
type searchAnswer struct {
	SearchCategories struct {
		RoomEvents struct {
			Count     int    `json:"count"`
			NextBatch string `json:"next_batch"`
			Results   []struct {
				Rank   float64     `json:"rank"`
				Result clientEvent `json:"result"`
			} `json:"results"`
		} `json:"room_events"`
	} `json:"search_categories"`
}

func (s *scenarioRun) searchEvents(ctx context.Context, u *user, term, order string) (*searchAnswer, error) {
	body := map[string]any{"search_categories": map[string]any{"room_events": map[string]any{
		"search_term": term, "order_by": order, "keys": []string{"content.body"}}}}
	var out searchAnswer
	if _, err := s.c.do(ctx, 0, "POST", u.base, clientPath("search"), u.token, body, &out); err != nil {
		return nil, fmt.Errorf("%s searches %q by %s: %w", u.localpart, term, order, err)
	}
	return &out, nil
}

// searchQuery is one measured request of the search scenario.
type searchQuery struct {
	term   string
	order  string // rank or recent
	kind   string // one_word or two_words
	bucket string // for one word: common, mid or rare
}

// search: -search-messages messages of generated text, spread over
// -search-rooms rooms, sent by -search-senders users at once (the client
// API has no batch send: concurrency is how the seeding is fast); the
// searcher is in every room. Then POST /search, one request at a time,
// with one-word terms (common, mid-frequency and rare words) and two-word
// terms, each ordered by rank and by recent. The figure is each search's
// latency; every search must find something (every term occurs in the
// corpus).
func (s *scenarioRun) search(ctx context.Context) error {
	nm, nr, ns, nq := s.o.searchMessages, s.o.searchRooms, s.o.searchSenders, s.o.searchQueries
	s.res.Params = map[string]any{"messages": nm, "rooms": nr, "senders": ns, "queries": nq}
	vocab := newVocabulary(wordSeed, 20000)
	texts := make([]string, nm)
	for i := range texts {
		texts[i] = vocab.message(i)
	}
	df := docFreq(texts)

	users, err := s.usersWith(ctx, ns+1, s.o.seedConcurrency)
	if err != nil {
		return err
	}
	searcher, senders := users[0], users[1:]
	rooms := make([]string, nr)
	s.prog.phase("setup: create rooms", nr)
	for j := range rooms {
		if rooms[j], err = s.createRoom(ctx, searcher, "public_chat", fmt.Sprintf("bench search %d", j)); err != nil {
			return err
		}
		s.prog.add(1)
	}
	s.prog.phase("setup: join rooms", ns)
	if err := forEach(ctx, ns, s.o.seedConcurrency, func(ctx context.Context, i int) error {
		s.prog.add(1)
		return s.joinRoom(ctx, senders[i], rooms[i%nr])
	}); err != nil {
		return err
	}
	// Every sender sends the next unsent message into its room until all
	// are sent: ns requests in flight, which the persister's group commit
	// batches per room.
	s.prog.phase("setup: send messages", nm)
	seedStart := time.Now()
	var next atomic.Int64
	if err := forEach(ctx, ns, ns, func(ctx context.Context, i int) error {
		for {
			k := int(next.Add(1) - 1)
			if k >= nm {
				return nil
			}
			if _, err := s.sendMessage(ctx, senders[i], rooms[i%nr], textMessage(texts[k])); err != nil {
				return err
			}
			s.prog.add(1)
		}
	}); err != nil {
		return err
	}
	seed := time.Since(seedStart)
	s.res.Extra["seed_s"] = seconds(seed)
	s.res.Extra["seed_messages_per_s"] = round2(float64(nm) / seed.Seconds())

	// Four more than measured: the first four, unmeasured, warm the
	// server's caches (the searcher's rooms and visibility) as on a server
	// that has been running, without warming the measured terms.
	const warmUp = 4
	queries, err := searchQueries(texts, df, nq+warmUp)
	if err != nil {
		return err
	}
	warm := queries[:warmUp]
	queries = queries[warmUp:]
	for _, q := range warm {
		if _, err := s.searchEvents(ctx, searcher, q.term, q.order); err != nil {
			return err
		}
	}
	byKind := map[string][]time.Duration{}
	var all []time.Duration
	var counts []int
	d := s.measure(ctx, "search", len(queries), func(ctx context.Context) {
		for _, q := range queries {
			if ctx.Err() != nil {
				return
			}
			t0 := time.Now()
			ans, err := s.searchEvents(ctx, searcher, q.term, q.order)
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			re := ans.SearchCategories.RoomEvents
			if len(re.Results) == 0 || re.Count == 0 {
				s.errs.add(fmt.Errorf("search %q by %s (%s %s): count %d, %d results; want some (the term is in the corpus)",
					q.term, q.order, q.kind, q.bucket, re.Count, len(re.Results)))
				continue
			}
			all = append(all, el)
			counts = append(counts, re.Count)
			byKind[q.kind+"_"+q.order] = append(byKind[q.kind+"_"+q.order], el)
			if q.bucket != "" {
				byKind[q.bucket+"_word"] = append(byKind[q.bucket+"_word"], el)
			}
			s.prog.add(1)
		}
	})
	s.setResult(len(all), d, "searches/s", all)
	for k, v := range byKind {
		s.res.Extra[k+"_ms"] = percentiles(v)
	}
	if len(counts) > 0 {
		slices.Sort(counts)
		s.res.Extra["median_count"] = counts[(len(counts)-1)/2]
		s.res.Extra["max_count"] = counts[len(counts)-1]
	}
	return ctx.Err()
}

// searchQueries is n queries cycling over one word × rank, one word ×
// recent, two words × rank, two words × recent; one-word terms cycle over
// the frequency buckets, two-word terms are two words of one message (so
// at least that message matches).
func searchQueries(texts []string, df map[string]int, n int) ([]searchQuery, error) {
	r := rand.New(rand.NewPCG(wordSeed, 2))
	var buckets []frequencyBucket
	var pools [][]string
	for _, b := range bucketsFor(len(texts)) {
		if t := termsIn(df, b); len(t) > 0 {
			buckets = append(buckets, b)
			pools = append(pools, t)
		}
	}
	if len(buckets) == 0 {
		return nil, errors.New("search: the corpus has no words to search for")
	}
	out := make([]searchQuery, 0, n)
	for i := range n {
		order := []string{"rank", "recent"}[i%2]
		if i%4 < 2 {
			b := (i / 4) % len(buckets)
			pool := pools[b]
			out = append(out, searchQuery{term: pool[r.IntN(len(pool))], order: order, kind: "one_word", bucket: buckets[b].name})
			continue
		}
		var words []string
		for len(words) < 2 {
			words = words[:0]
			for _, w := range strings.FieldsFunc(strings.ToLower(texts[r.IntN(len(texts))]), func(c rune) bool { return c < 'a' || c > 'z' }) {
				if !slices.Contains(words, w) {
					words = append(words, w)
				}
			}
		}
		a := r.IntN(len(words))
		b := (a + 1 + r.IntN(len(words)-1)) % len(words)
		out = append(out, searchQuery{term: words[a] + " " + words[b], order: order, kind: "two_words"})
	}
	return out, nil
}

// userdirAnswer is POST /user_directory/search's answer.
type userdirAnswer struct {
	Limited bool          `json:"limited"`
	Results []userdirUser `json:"results"`
}

type userdirUser struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name"`
}

func (s *scenarioRun) searchUsers(ctx context.Context, u *user, term string, limit int) (*userdirAnswer, error) {
	var out userdirAnswer
	body := map[string]any{"search_term": term, "limit": limit}
	if _, err := s.c.do(ctx, 0, "POST", u.base, clientPath("user_directory", "search"), u.token, body, &out); err != nil {
		return nil, fmt.Errorf("%s searches the user directory for %q: %w", u.localpart, term, err)
	}
	return &out, nil
}

func (s *scenarioRun) setDisplayName(ctx context.Context, u *user, name string) error {
	path := clientPath("profile", u.id, "displayname")
	if _, err := s.c.do(ctx, 0, "PUT", u.base, path, u.token, map[string]any{"displayname": name}, nil); err != nil {
		return fmt.Errorf("%s sets display name: %w", u.localpart, err)
	}
	return nil
}

// userdirLimit is the limit of every measured search (Synapse's default).
const userdirLimit = 10

// userdirCatchUp bounds the wait for the directory's updater to apply the
// joins before the measured phase.
const userdirCatchUp = 3 * time.Minute

// userdir: -userdir-users users with generated display names ("First
// Last"; names repeat), each joined to one of -userdir-rooms public rooms
// the searcher created, so every one is visible to the searcher. Once the
// directory has caught up, POST /user_directory/search one request at a
// time with prefixes of 1 and 3 letters, whole first names and full names.
// Every search must find someone (every term is in some name); a full-name
// search must return a user with that display name.
func (s *scenarioRun) userdir(ctx context.Context) error {
	nu, nr, nq := s.o.userdirUsers, s.o.userdirRooms, s.o.userdirQueries
	s.res.Params = map[string]any{"users": nu, "rooms": nr, "queries": nq, "limit": userdirLimit}
	users, err := s.usersWith(ctx, nu+1, s.o.seedConcurrency)
	if err != nil {
		return err
	}
	searcher, members := users[0], users[1:]
	names := make([]string, nu)
	for i := range names {
		names[i] = displayName(wordSeed, i)
	}
	rooms := make([]string, nr)
	s.prog.phase("setup: create rooms", nr)
	for j := range rooms {
		if rooms[j], err = s.createRoom(ctx, searcher, "public_chat", fmt.Sprintf("bench userdir %d", j)); err != nil {
			return err
		}
		s.prog.add(1)
	}
	// Display name first: set before the join, the join's member event
	// carries it and no room needs a profile update.
	s.prog.phase("setup: display names and joins", nu)
	seedStart := time.Now()
	if err := forEach(ctx, nu, s.o.seedConcurrency, func(ctx context.Context, i int) error {
		if err := s.setDisplayName(ctx, members[i], names[i]); err != nil {
			return err
		}
		if err := s.joinRoom(ctx, members[i], rooms[i%nr]); err != nil {
			return err
		}
		s.prog.add(1)
		return nil
	}); err != nil {
		return err
	}
	s.res.Extra["profiles_and_joins_s"] = seconds(time.Since(seedStart))

	// The directory is updated behind the events stream: wait until a
	// sample of members (the last ones of each room and some at random)
	// is found by user id.
	s.prog.phase("setup: wait for the directory", 0)
	catchStart := time.Now()
	r := rand.New(rand.NewPCG(wordSeed, 3))
	var sample []int
	for i := max(nu-2*nr, 0); i < nu; i++ {
		sample = append(sample, i)
	}
	for range min(20, nu) {
		sample = append(sample, r.IntN(nu))
	}
	deadline := time.Now().Add(userdirCatchUp)
	for _, i := range sample {
		for {
			ans, err := s.searchUsers(ctx, searcher, members[i].localpart, userdirLimit)
			if err != nil {
				return err
			}
			if slices.ContainsFunc(ans.Results, func(u userdirUser) bool {
				return u.UserID == members[i].id
			}) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the user directory does not list %s (%q) %s after the last join", members[i].id, names[i], userdirCatchUp)
			}
			if err := pause(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	s.res.Extra["directory_catch_up_s"] = seconds(time.Since(catchStart))

	type query struct{ term, kind, name string }
	var queries []query
	for i := range nq {
		name := names[r.IntN(nu)]
		first, last, _ := strings.Cut(name, " ")
		word := []string{first, last}[r.IntN(2)]
		switch i % 4 {
		case 0:
			queries = append(queries, query{term: strings.ToLower(word[:1]), kind: "prefix1"})
		case 1:
			queries = append(queries, query{term: strings.ToLower(word[:min(3, len(word))]), kind: "prefix3"})
		case 2:
			queries = append(queries, query{term: first, kind: "first_name"})
		default:
			queries = append(queries, query{term: name, kind: "full_name", name: name})
		}
	}
	byKind := map[string][]time.Duration{}
	var all []time.Duration
	limited := 0
	d := s.measure(ctx, "user directory search", len(queries), func(ctx context.Context) {
		for _, q := range queries {
			if ctx.Err() != nil {
				return
			}
			t0 := time.Now()
			ans, err := s.searchUsers(ctx, searcher, q.term, userdirLimit)
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			switch {
			case len(ans.Results) == 0:
				s.errs.add(fmt.Errorf("user directory search %q (%s) found nobody; some name has it", q.term, q.kind))
				continue
			case q.name != "" && !slices.ContainsFunc(ans.Results, func(u userdirUser) bool {
				return u.DisplayName == q.name
			}):
				s.errs.add(fmt.Errorf("user directory search %q: no result has that display name: %v", q.term, ans.Results))
				continue
			}
			if ans.Limited {
				limited++
			}
			all = append(all, el)
			byKind[q.kind] = append(byKind[q.kind], el)
			s.prog.add(1)
		}
	})
	s.setResult(len(all), d, "searches/s", all)
	for k, v := range byKind {
		s.res.Extra[k+"_ms"] = percentiles(v)
	}
	s.res.Extra["limited_answers"] = limited
	return ctx.Err()
}
