package rooms

import "testing"

func TestStateCacheDropsLoadsRacingAChange(t *testing.T) {
	c := newStateCache(10)
	k := stateKey3("!r", "m.room.member", "@a")
	_, st, ok := c.get(k)
	if ok {
		t.Fatal("empty cache has an entry")
	}
	c.changed(k) // a change lands while the load's query runs
	c.put(k, st, []stateChange{{pos: 1}})
	if _, _, ok := c.get(k); ok {
		t.Fatal("a load that raced a change was stored")
	}
	_, st, _ = c.get(k)
	c.put(k, st, []stateChange{{pos: 1}, {pos: 2}})
	v, _, ok := c.get(k)
	if !ok || len(v.([]stateChange)) != 2 {
		t.Fatalf("load after the change: %v %v", v, ok)
	}
	// Another key's change does not disturb it; its own does.
	c.changed(stateKey3("!r", "m.room.member", "@b"))
	if _, _, ok := c.get(k); !ok {
		t.Fatal("another key's change dropped the entry")
	}
	c.changed(k)
	if _, _, ok := c.get(k); ok {
		t.Fatal("the key's change did not drop the entry")
	}
}

func TestStateCacheBounded(t *testing.T) {
	c := newStateCache(3)
	var stamps []stamp
	keys := []stateKey{stateKey3("!1", "t", ""), stateKey3("!2", "t", ""), stateKey3("!3", "t", ""), stateKey3("!4", "t", "")}
	for _, k := range keys {
		_, st, _ := c.get(k)
		stamps = append(stamps, st)
	}
	for i, k := range keys[:3] {
		c.put(k, stamps[i], i)
	}
	// Full: the next store empties the cache and starts a new epoch, so
	// loads stamped before it are not stored either.
	c.put(keys[3], stamps[3], 3)
	for _, k := range keys {
		if _, _, ok := c.get(k); ok {
			t.Fatalf("%v survived the reset", k)
		}
	}
	c.put(keys[0], stamps[0], 0)
	if _, _, ok := c.get(keys[0]); ok {
		t.Fatal("a load stamped before the reset was stored")
	}
}
