package main

import (
	"math/rand/v2"
	"sort"
	"strings"
)

// The text generator of the search scenario: deterministic (message i is
// always the same text for a given vocabulary seed, whichever sender sends
// it and in whatever order), with word frequencies following Zipf's law as
// natural text does, so a search term can be picked by how many messages
// contain it: the cost of a full-text query depends mostly on that.

// chatWords are the most frequent words of the vocabulary: real English
// chat words, none of them a stop word of PostgreSQL's english
// configuration (which would make a query match nothing).
var chatWords = strings.Fields(`meeting deploy server lunch review release build test branch merge ticket
	customer invoice report dashboard database backup coffee weekend holiday project deadline budget
	design sprint planning standup demo feature bug crash error latency migration schedule office
	network router printer laptop keyboard monitor password account login session token cluster
	kubernetes docker config pipeline ci staging production rollback incident alert pager oncall
	morning afternoon evening tomorrow yesterday today monday tuesday wednesday thursday friday
	question answer update status change approve reject draft document spreadsheet slide video call
	phone email message channel thread reply mention reaction emoji photo picture camera music
	football cricket tennis running cycling hiking travel flight train hotel airport ticket visa
	pizza pasta salad sandwich burger sushi curry noodles bread cheese chocolate cake birthday party`)

// syllables build the synthetic words past the chat words: pronounceable,
// mostly unique, and long enough that their prefixes are selective.
var (
	onsets = []string{"b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "pl", "st", "tr"}
	nuclei = []string{"a", "e", "i", "o", "u", "ai", "ou"}
)

// vocabulary is the ranked word list: rank 0 is the most frequent.
type vocabulary struct {
	words []string
	seed  uint64
}

// newVocabulary builds size words (chat words first, then synthetic ones)
// from seed.
func newVocabulary(seed uint64, size int) *vocabulary {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	seen := map[string]bool{}
	var words []string
	for _, w := range chatWords {
		if !seen[w] {
			seen[w] = true
			words = append(words, w)
		}
	}
	for len(words) < size {
		var b strings.Builder
		for range 2 + r.IntN(3) {
			b.WriteString(onsets[r.IntN(len(onsets))])
			b.WriteString(nuclei[r.IntN(len(nuclei))])
		}
		if r.IntN(3) == 0 {
			b.WriteString(onsets[r.IntN(len(onsets))])
		}
		if w := b.String(); !seen[w] {
			seen[w] = true
			words = append(words, w)
		}
	}
	return &vocabulary{words: words[:size], seed: seed}
}

// message is the text of message i: 3 to 24 words drawn with Zipf
// frequencies, as sentences.
func (v *vocabulary) message(i int) string {
	r := rand.New(rand.NewPCG(v.seed, uint64(i)+1))
	z := rand.NewZipf(r, 1.07, 2, uint64(len(v.words)-1))
	n := 3 + r.IntN(22)
	var b strings.Builder
	capital := true
	for k := range n {
		w := v.words[z.Uint64()]
		if k > 0 {
			b.WriteByte(' ')
		}
		if capital {
			w = strings.ToUpper(w[:1]) + w[1:]
			capital = false
		}
		b.WriteString(w)
		if k < n-1 && r.IntN(8) == 0 {
			p := []string{",", ".", "!", "?"}[r.IntN(4)]
			b.WriteString(p)
			capital = p != ","
		}
	}
	b.WriteString([]string{".", "!", "?", ""}[r.IntN(4)])
	return b.String()
}

// docFreq counts, over texts, the messages each (lower-cased) word occurs
// in.
func docFreq(texts []string) map[string]int {
	df := map[string]int{}
	for _, t := range texts {
		seen := map[string]bool{}
		for _, w := range strings.FieldsFunc(strings.ToLower(t), func(r rune) bool { return r < 'a' || r > 'z' }) {
			if !seen[w] {
				seen[w] = true
				df[w]++
			}
		}
	}
	return df
}

// frequencyBucket is a class of search terms by how many messages hold
// them.
type frequencyBucket struct {
	name     string
	min, max int // document frequency bounds, inclusive
}

// bucketsFor splits terms by document frequency relative to the corpus
// size: common words (in ≥ 2 % of the messages), mid (0.05–2 %) and rare
// (at most 0.05 %, at least 1 message).
func bucketsFor(messages int) []frequencyBucket {
	common := max(messages/50, 2)
	mid := max(messages/2000, 1)
	return []frequencyBucket{
		{"common", common, messages},
		{"mid", mid + 1, common - 1},
		{"rare", 1, mid},
	}
}

// termsIn returns the words whose document frequency is in the bucket, in a
// fixed order (most frequent first, then alphabetical).
func termsIn(df map[string]int, b frequencyBucket) []string {
	var out []string
	for w, n := range df {
		if n >= b.min && n <= b.max {
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if df[out[i]] != df[out[j]] {
			return df[out[i]] > df[out[j]]
		}
		return out[i] < out[j]
	})
	return out
}

// Display names of the userdir scenario: first and last names drawn per
// user, so names repeat as they do in a real directory.
var (
	firstNames = strings.Fields(`Alice Bob Carol David Emma Frank Grace Henry Isla James Karen Liam Maria Noah Olivia
		Peter Quinn Rachel Samuel Tara Umar Vera William Xena Yusuf Zoe Aaron Bella Caleb Diana Ethan Fiona
		George Hannah Ivan Julia Kevin Laura Martin Nina Oscar Paula Ravi Sofia Thomas Ursula Victor Wendy
		Amir Beatriz Chen Dmitri Elif Farah Giulia Hiroshi Ingrid Jorge Keiko Lars Mei Nikolai Priya Rosa
		Sven Tomasz Yara Zainab`)
	lastNames = strings.Fields(`Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson
		Evans Walker White Roberts Green Hall Wood Jackson Clarke Patel Khan Lewis James Phillips Mason
		Mitchell Rose Davis Rodriguez Cox Alexander Garden Campbell Johnston Moore Smyth Oneill Doherty
		Stewart Quinn Murphy Graham Mclaughlin Hamilton Murray Hughes Robertson Thomson Scott Macdonald
		Reid Clark Ross Young Watson Paterson Morrison Muller Schmidt Schneider Fischer Weber Meyer Wagner
		Becker Schulz Hoffmann Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Garcia
		Fernandez Lopez Martinez Sanchez Perez Gomez Martin Jimenez Ruiz Hernandez Diaz Moreno Alvarez
		Nakamura Tanaka Suzuki Watanabe Ito Yamamoto Kobayashi Kato Wang Li Zhang Liu Chen Yang Huang`)
)

// displayName is user i's display name for seed.
func displayName(seed uint64, i int) string {
	r := rand.New(rand.NewPCG(seed, uint64(i)+1))
	return firstNames[r.IntN(len(firstNames))] + " " + lastNames[r.IntN(len(lastNames))]
}
