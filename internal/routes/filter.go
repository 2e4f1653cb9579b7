package routes

import (
	"regexp"
	"regexp/syntax"
	"strings"
)

// literalFilter is one pattern with the literals any match must contain:
// the literal right after ^ as a prefix, and every other literal of the
// pattern's top-level concatenation as a substring.
type literalFilter struct {
	re       *regexp.Regexp
	prefix   string
	contains []string
}

func newLiteralFilter(pattern string) literalFilter {
	f := literalFilter{re: regexp.MustCompile(pattern)}
	parsed, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return f // MustCompile above accepted it; keep the filter empty
	}
	parsed = parsed.Simplify()
	parts := []*syntax.Regexp{parsed}
	if parsed.Op == syntax.OpConcat {
		parts = parsed.Sub
	}
	anchored := false
	for i, p := range parts {
		switch {
		case p.Op == syntax.OpBeginText && i == 0:
			anchored = true
		case p.Op == syntax.OpLiteral && p.Flags&syntax.FoldCase == 0:
			lit := string(p.Rune)
			if anchored && i == 1 {
				f.prefix = lit
			} else {
				f.contains = append(f.contains, lit)
			}
		}
	}
	return f
}

func (f literalFilter) mayMatch(path string) bool {
	if !strings.HasPrefix(path, f.prefix) {
		return false
	}
	for _, s := range f.contains {
		if !strings.Contains(path, s) {
			return false
		}
	}
	return true
}
