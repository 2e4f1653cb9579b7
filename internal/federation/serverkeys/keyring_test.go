package serverkeys_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"ganglion/internal/canonicaljson"
	"ganglion/internal/events"
	"ganglion/internal/federation/serverkeys"
	"ganglion/internal/storage"
	"ganglion/internal/storage/storagetest"
	"ganglion/internal/testutil"
)

// A key is fetched from its server once, stored in the shared table, and
// found there by another process's keyring (a worker) without a fetch.
func TestKeyringFetchesDirectlyAndSharesTheCache(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		k1 := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
		ctx := t.Context()

		pub, err := k1.VerifyKey(ctx, "remote.test", rkey.ID, c.MS())
		if err != nil || !pub.Equal(rkey.Public()) {
			t.Fatalf("VerifyKey: %v, %v", pub, err)
		}
		if n := rt.count("remote.test", serverkeys.PathServer); n != 1 {
			t.Fatalf("%d fetches, want 1", n)
		}
		// In-process cache: no database needed, no fetch.
		if _, err := k1.VerifyKey(ctx, "remote.test", rkey.ID, c.MS()); err != nil {
			t.Fatal(err)
		}
		// Another worker on the same database.
		k2 := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
		if pub, err := k2.VerifyKey(ctx, "remote.test", rkey.ID, c.MS()); err != nil || !pub.Equal(rkey.Public()) {
			t.Fatalf("second keyring: %v, %v", pub, err)
		}
		if n := rt.count("remote.test", serverkeys.PathServer); n != 1 {
			t.Fatalf("%d fetches after the second keyring, want 1", n)
		}
		sk, ok, err := serverkeys.NewStore(db).Key(ctx, "remote.test", rkey.ID)
		if err != nil || !ok || sk.FromServer != "remote.test" || sk.AddedTS != c.MS() {
			t.Fatalf("stored %+v %v %v", sk, ok, err)
		}
	})
}

// Validity: a key counts up to its answer's valid_until_ts (capped at seven
// days after the fetch), an old key up to its expired_ts; atTS 0 (room
// versions 1–4) accepts any known key. A key not valid at the time asked
// is refetched once, and reported as not valid when it still is not.
func TestKeyringValidity(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rkey := mustKey(t)
		oldPub, _, _ := ed25519.GenerateKey(nil)
		expired := c.MS() - 1000
		remote, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: "remote.test", Key: rkey,
			RefreshInterval: 30 * 24 * time.Hour, Now: c.Now,
			OldKeys: map[string]serverkeys.OldKey{"ed25519:old": {Key: oldPub, ExpiredTS: expired}}})
		if err != nil {
			t.Fatal(err)
		}
		rt.add(t, "remote.test", keyServer(remote))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt, MinRefetchInterval: time.Millisecond})
		ctx := t.Context()

		if _, err := k.VerifyKey(ctx, "remote.test", rkey.ID, c.MS()); err != nil {
			t.Fatal(err)
		}
		sevenDays := c.MS() + 7*24*time.Hour.Milliseconds()
		if _, err := k.VerifyKey(ctx, "remote.test", rkey.ID, sevenDays); err != nil {
			t.Errorf("at the seven-day cap: %v", err)
		}
		before := rt.count("remote.test", serverkeys.PathServer)
		c.Advance(time.Second) // past MinRefetchInterval
		if _, err := k.VerifyKey(ctx, "remote.test", rkey.ID, sevenDays+2000); !errors.Is(err, serverkeys.ErrKeyNotValid) {
			t.Errorf("past the seven-day cap: %v, want ErrKeyNotValid", err)
		}
		if n := rt.count("remote.test", serverkeys.PathServer); n != before+1 {
			t.Errorf("%d fetches for a key not valid then, want one refetch (%d)", n, before+1)
		}
		if pub, err := k.VerifyKey(ctx, "remote.test", "ed25519:old", expired); err != nil || !pub.Equal(oldPub) {
			t.Errorf("old key at its expiry: %v %v", pub, err)
		}
		c.Advance(time.Second)
		if _, err := k.VerifyKey(ctx, "remote.test", "ed25519:old", expired+1); !errors.Is(err, serverkeys.ErrKeyNotValid) {
			t.Errorf("old key after its expiry: %v, want ErrKeyNotValid", err)
		}
		if _, err := k.VerifyKey(ctx, "remote.test", "ed25519:old", 0); err != nil {
			t.Errorf("old key at time 0 (room v1-4): %v", err)
		}
	})
}

// Answers that are not the server's own, properly signed keys are refused
// and nothing is stored.
func TestKeyringRefusesBadAnswers(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rkey, other := mustKey(t), mustKey(t)
		good, _ := newLocal(t, "remote.test", rkey, c, nil).Response()
		impostor, _ := newLocal(t, "elsewhere.test", rkey, c, nil).Response()
		unsigned, _ := canonicaljson.Marshal(map[string]any{"server_name": "remote.test", "valid_until_ts": c.MS() + 1e6,
			"verify_keys": map[string]any{rkey.ID: map[string]string{"key": events.EncodeBase64(rkey.Public())}}})
		// Signed with a key it does not list under that id.
		wrongKey, _ := events.SignJSON(unsigned, "remote.test", events.SigningKey{ID: rkey.ID, Private: other.Private})
		// A listed key whose signature was made over other content.
		tampered := []byte(strings.Replace(string(good), `"valid_until_ts":`, `"valid_until_ts":1`, 1))
		cases := map[string][]byte{
			"other server_name": impostor,
			"unsigned":          unsigned,
			"wrong key":         wrongKey,
			"tampered":          tampered,
			"not json":          []byte("<html>"),
		}
		for name, body := range cases {
			rt := newRouter()
			rt.add(t, "remote.test", rawServer(body))
			k := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
			if _, err := k.VerifyKey(t.Context(), "remote.test", rkey.ID, c.MS()); !errors.Is(err, serverkeys.ErrKeyNotFound) {
				t.Errorf("%s: %v, want ErrKeyNotFound", name, err)
			}
			if _, ok, _ := serverkeys.NewStore(db).Key(t.Context(), "remote.test", rkey.ID); ok {
				t.Fatalf("%s: key stored", name)
			}
		}
	})
}

// Concurrent lookups of one server's keys share one fetch.
func TestKeyringCoalescesFetches(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rt.gate = make(chan struct{})
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
		const callers = 8
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := k.VerifyKey(context.Background(), "remote.test", rkey.ID, 1)
				errs <- err
			}()
		}
		testutil.Eventually(t, 10*time.Second, "every caller waiting on one fetch", func() bool {
			return k.FlightWaiters("remote.test") == callers-1
		})
		close(rt.gate)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if n := rt.count("remote.test", serverkeys.PathServer); n != 1 {
			t.Errorf("%d fetches, want 1", n)
		}
	})
}

// A caller that gives up does not cancel the fetch others wait for, and its
// result still lands in the cache.
func TestKeyringFetchOutlivesCaller(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rt.gate = make(chan struct{})
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := k.VerifyKey(ctx, "remote.test", rkey.ID, 1)
			done <- err
		}()
		testutil.Eventually(t, 10*time.Second, "the fetch to start", func() bool {
			return rt.count("remote.test", serverkeys.PathServer) == 1
		})
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller: %v", err)
		}
		close(rt.gate)
		testutil.Eventually(t, 10*time.Second, "the key to be stored", func() bool {
			_, ok, _ := serverkeys.NewStore(db).Key(t.Context(), "remote.test", rkey.ID)
			return ok
		})
	})
}

// A server that fails is not asked again until its backoff passes, which
// doubles per failure; an answer resets it. Unknown key ids of a server
// that just answered do not trigger fetches.
func TestKeyringBackoffAndRefetchLimit(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter() // remote.test has no route yet: every fetch fails
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt, BackoffMin: time.Minute, BackoffMax: 10 * time.Minute,
			MinRefetchInterval: time.Minute})
		ctx := t.Context()
		lookup := func() error { _, err := k.VerifyKey(ctx, "remote.test", "ed25519:a", 1); return err }
		fetches := func() int { return rt.count("remote.test", serverkeys.PathServer) }

		if err := lookup(); !errors.Is(err, serverkeys.ErrKeyNotFound) {
			t.Fatalf("unreachable server: %v", err)
		}
		if err := lookup(); err == nil || fetches() != 1 {
			t.Fatalf("during backoff: %v, %d fetches, want 1", err, fetches())
		}
		c.Advance(time.Minute + time.Millisecond)
		_ = lookup()
		if fetches() != 2 {
			t.Fatalf("after the first backoff: %d fetches, want 2", fetches())
		}
		c.Advance(time.Minute + time.Millisecond) // the second wait is 2m
		_ = lookup()
		if fetches() != 2 {
			t.Fatalf("backoff did not double: %d fetches", fetches())
		}
		c.Advance(time.Minute)
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		if _, err := k.VerifyKey(ctx, "remote.test", rkey.ID, 1); err != nil || fetches() != 3 {
			t.Fatalf("after recovery: %v, %d fetches", err, fetches())
		}
		// The server just answered: a key id it does not have is not worth
		// another fetch yet.
		for range 3 {
			if _, err := k.VerifyKey(ctx, "remote.test", "ed25519:unknown", 1); !errors.Is(err, serverkeys.ErrKeyNotFound) {
				t.Fatalf("unknown key id: %v", err)
			}
		}
		if fetches() != 3 {
			t.Fatalf("%d fetches for unknown key ids right after an answer, want 3", fetches())
		}
		c.Advance(time.Minute + time.Millisecond)
		_, _ = k.VerifyKey(ctx, "remote.test", "ed25519:unknown", 1)
		if fetches() != 4 {
			t.Fatalf("%d fetches once the refetch interval passed, want 4", fetches())
		}
	})
}

// A keyring with no sources only knows what the shared cache holds.
func TestKeyringWithoutSources(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		k := newKeyring(t, db, c, serverkeys.Options{})
		if _, err := k.VerifyKey(t.Context(), "remote.test", "ed25519:a", 1); !errors.Is(err, serverkeys.ErrKeyNotFound) {
			t.Fatalf("%v, want ErrKeyNotFound", err)
		}
		if _, err := k.VerifyKey(t.Context(), "remote.test", "curve25519:a", 1); !errors.Is(err, serverkeys.ErrKeyNotFound) {
			t.Fatalf("other algorithm: %v, want ErrKeyNotFound", err)
		}
	})
}

// Close cancels a fetch in flight, waits for it, and stops new ones.
func TestKeyringClose(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter()
		rt.gate = make(chan struct{}) // never opened: the fetch hangs until cancelled
		rkey := mustKey(t)
		rt.add(t, "remote.test", keyServer(newLocal(t, "remote.test", rkey, c, nil)))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt, FetchTimeout: time.Hour})
		done := make(chan error, 1)
		go func() {
			_, err := k.VerifyKey(t.Context(), "remote.test", rkey.ID, 1)
			done <- err
		}()
		testutil.Eventually(t, 10*time.Second, "the fetch to start", func() bool {
			return rt.count("remote.test", serverkeys.PathServer) == 1
		})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := k.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, serverkeys.ErrKeyNotFound) {
			t.Fatalf("lookup during Close: %v", err)
		}
		if _, err := k.VerifyKey(t.Context(), "other.test", rkey.ID, 1); err == nil || rt.count("other.test", serverkeys.PathServer) != 0 {
			t.Fatalf("lookup after Close: %v", err)
		}
	})
}

// When one source fails and another answers with the key, but not valid at
// the time asked, the caller hears that the key is not valid then (not
// that it is unknown).
func TestKeyringNotValidWhenAnotherSourceFailed(t *testing.T) {
	storagetest.ForEachEngine(t, func(t *testing.T, db *storage.DB) {
		c := newClock()
		rt := newRouter() // notary.test unreachable
		rkey := mustKey(t)
		remote, err := serverkeys.NewLocal(serverkeys.LocalConfig{ServerName: "remote.test", Key: rkey,
			RefreshInterval: time.Hour, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		rt.add(t, "remote.test", keyServer(remote))
		k := newKeyring(t, db, c, serverkeys.Options{Getter: rt, Poster: rt,
			Notaries: []serverkeys.Notary{{ServerName: "notary.test"}}})
		_, err = k.VerifyKey(t.Context(), "remote.test", rkey.ID, c.MS()+2*time.Hour.Milliseconds())
		if !errors.Is(err, serverkeys.ErrKeyNotValid) {
			t.Fatalf("%v, want ErrKeyNotValid", err)
		}
		if _, err := k.VerifyKey(t.Context(), "remote.test", rkey.ID, c.MS()); err != nil {
			t.Fatalf("at a time the key is valid: %v", err)
		}
	})
}
