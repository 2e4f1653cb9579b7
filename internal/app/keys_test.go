package app

import (
	"slices"
	"testing"

	"ganglion/internal/config"
)

func TestDeviceListShards(t *testing.T) {
	m := map[string]config.InstanceLocation{"main": {}, "w1": {}}
	cases := []struct {
		writers []string
		fleet   bool
		want    []string
		err     bool
	}{
		{[]string{"main"}, false, []string{"main"}, false},
		{[]string{"main", "w1"}, true, []string{"main", "w1"}, false},
		{[]string{"w1", "w2", "main"}, true, []string{"w1", "main"}, false}, // w2 cannot be reached
		{[]string{"w2", "w3"}, true, nil, true},
	}
	for _, c := range cases {
		got, err := deviceListShards(c.writers, m, c.fleet, "w1")
		if (err != nil) != c.err || !slices.Equal(got, c.want) {
			t.Errorf("%v (fleet %v): %v, %v; want %v (error %v)", c.writers, c.fleet, got, err, c.want, c.err)
		}
	}
}
