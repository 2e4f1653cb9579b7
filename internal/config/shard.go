package config

import (
	"crypto/sha256"
	"math/bits"
)

// ShardFor picks the instance responsible for key, the way Synapse shards
// events by room ID, federation by destination and pushers by user ID:
// SHA-256(key) read as a little-endian 256-bit integer, modulo
// len(instances), indexes instances. The order of instances therefore
// matters, and every process must agree on it. Returns "" for no instances.
func ShardFor(instances []string, key string) string {
	switch len(instances) {
	case 0:
		return ""
	case 1:
		return instances[0]
	}
	return instances[ShardIndex(key, len(instances))]
}

// ShardIndex returns SHA-256(key) read as a little-endian integer, mod n
// (n > 0).
//
// Only the residue matters, so the 256-bit integer is never built: Horner's
// rule from the most significant byte (the last one, little-endian) keeps a
// running remainder below n. The step r*256+b is done in 128 bits so it is
// exact for every n.
func ShardIndex(key string, n int) int {
	sum := sha256.Sum256([]byte(key))
	m := uint64(n)
	var r uint64
	for i := len(sum) - 1; i >= 0; i-- {
		hi, lo := bits.Mul64(r, 256)
		var carry uint64
		lo, carry = bits.Add64(lo, uint64(sum[i]), 0)
		r = bits.Rem64(hi+carry, lo, m)
	}
	return int(r)
}
