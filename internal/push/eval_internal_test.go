package push

import (
	"regexp"
	"strings"
	"testing"
)

// FuzzLiteralWords: the regexp-free matcher of literal content.body
// patterns agrees with the glob regular expression (ASCII inputs, where
// both fold case the same way).
func FuzzLiteralWords(f *testing.F) {
	f.Add("cake", "The cake is a lie")
	f.Add("@room", "hey @room!")
	f.Add("a b", "xa b a b_")
	f.Add("ab", "abab ab")
	f.Fuzz(func(t *testing.T, pattern, body string) {
		if strings.ContainsAny(pattern, "*?") || !ascii(pattern) || !ascii(body) {
			return
		}
		want := pattern != "" && regexp.MustCompile(globRegexp(pattern, true)).MatchString(body)
		if got := containsWord(strings.ToLower(body), strings.ToLower(pattern)); got != want {
			t.Fatalf("containsWord(%q, %q) = %v, regexp says %v", body, pattern, got, want)
		}
	})
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
