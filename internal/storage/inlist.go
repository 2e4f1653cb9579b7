package storage

import (
	"strconv"
	"strings"
)

// AppendIn appends values to args and returns the placeholders that name
// them, "$k,$k+1,…", for an IN (…) list after the arguments already in
// args. Both engines take $n placeholders; callers keep each list under
// the engines' bind-parameter limits (SQLite's is 32,766) by chunking.
func AppendIn(args []any, values []string) ([]any, string) {
	var b strings.Builder
	for i, v := range values {
		if i > 0 {
			b.WriteByte(',')
		}
		args = append(args, v)
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(len(args)))
	}
	return args, b.String()
}
