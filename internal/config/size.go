package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a size as written in the config: a plain number of bytes or a
// number with a K, M, G or T suffix (powers of 1024, as in Synapse). It is
// kept as written so a bad value becomes a Validate problem with its key
// path rather than a decode error.
type ByteSize string

// Bytes parses the size.
func (s ByteSize) Bytes() (int64, error) {
	return ParseSize(string(s))
}

// ParseSize parses "50M", "1024", "2g" and the like. Suffixes are binary
// (K = 1024) and case-insensitive; the number must be a whole number.
func ParseSize(s string) (int64, error) {
	v := strings.TrimSpace(s)
	if v == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := int64(1)
	switch v[len(v)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	}
	if mult != 1 {
		v = v[:len(v)-1]
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes, optionally with a K, M, G or T suffix", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}
