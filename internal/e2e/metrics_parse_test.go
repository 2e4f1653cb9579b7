package e2e_test

import "strconv"

// sampleInt reads a sample value of the text exposition, which writes
// floats: counters and positions above a million come as 1.5e+06. Integers
// up to 2^53 (typing's clock-based positions among them) are exact.
func sampleInt(v string) int64 {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return -1
	}
	return int64(f)
}
