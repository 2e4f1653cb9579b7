package search

import (
	"errors"
	"testing"

	"ganglion/internal/mxhttp"
)

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []cursor{{recent: true, n: 1}, {recent: true, n: 1 << 40}, {recent: false, n: 0}, {recent: false, n: 37}} {
		got, err := parseCursor(c.String(), c.recent)
		if err != nil || got != c {
			t.Fatalf("parseCursor(%q) = %+v, %v; want %+v", c.String(), got, err, c)
		}
		// A token of one order is refused by the other.
		if _, err := parseCursor(c.String(), !c.recent); !isInvalidParam(err) {
			t.Fatalf("parseCursor(%q) for the other order: %v", c.String(), err)
		}
	}
	for _, bad := range []string{"", "r", "x5", "r-1", "t9999999999999999999999", "not base64!", "cjEy\x00"} {
		if _, err := parseCursor(bad, false); !isInvalidParam(err) {
			t.Fatalf("parseCursor(%q): %v, want M_INVALID_PARAM", bad, err)
		}
	}
}

func isInvalidParam(err error) bool {
	var me *mxhttp.Error
	return errors.As(err, &me) && me.Code == "M_INVALID_PARAM" && me.Status == 400
}

// FuzzParseCursor: next_batch comes from clients; any string is either a
// cursor that prints back to itself or M_INVALID_PARAM, never a panic.
func FuzzParseCursor(f *testing.F) {
	f.Add("dDEy", true)
	f.Add("cjA", false)
	f.Add("", false)
	f.Fuzz(func(t *testing.T, s string, recent bool) {
		c, err := parseCursor(s, recent)
		if err != nil {
			if !isInvalidParam(err) {
				t.Fatalf("parseCursor(%q): %v", s, err)
			}
			return
		}
		if c.n < 0 || c.recent != recent {
			t.Fatalf("parseCursor(%q) = %+v", s, c)
		}
		if again, err := parseCursor(c.String(), recent); err != nil || again != c {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

// FuzzWords: terms are split into letters and digits only, so nothing of
// the engines' query syntax reaches them.
func FuzzWords(f *testing.F) {
	f.Add(`"a" OR b* & !c :* NEAR(d)`)
	f.Fuzz(func(t *testing.T, s string) {
		q := Query{Terms: Words(s)}
		for _, w := range q.Terms {
			if w == "" {
				t.Fatalf("empty word from %q", s)
			}
			for _, r := range w {
				if r == '"' || r == '*' || r == '&' || r == ':' || r == '(' || r == ' ' || r == '!' || r == '|' {
					t.Fatalf("word %q from %q carries syntax", w, s)
				}
			}
		}
	})
}
