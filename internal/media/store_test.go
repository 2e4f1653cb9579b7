package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"ganglion/internal/media"
)

func TestLocalStore(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := media.NewLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello media")
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	st, err := s.Stage(ctx, bytes.NewReader(data), 100)
	if err != nil {
		t.Fatal(err)
	}
	if st.SHA256() != want || st.Size() != int64(len(data)) {
		t.Fatalf("staged %s/%d, want %s/%d", st.SHA256(), st.Size(), want, len(data))
	}
	if _, err := s.Open(ctx, want); !errors.Is(err, media.ErrNoContent) {
		t.Fatalf("open before publish: %v, want ErrNoContent", err)
	}
	if err := st.Publish(); err != nil {
		t.Fatal(err)
	}
	if err := st.Publish(); err != nil {
		t.Fatalf("second publish: %v", err)
	}
	if err := st.Discard(); err != nil {
		t.Fatal(err)
	}
	c, err := s.Open(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if !bytes.Equal(got, data) || c.Size() != int64(len(data)) {
		t.Fatalf("read back %q (size %d)", got, c.Size())
	}
	if n := countFiles(t, filepath.Join(dir, "tmp")); n != 0 {
		t.Fatalf("%d files left in tmp", n)
	}

	// Exactly the limit is fine; one byte more is ErrTooLarge and leaves
	// nothing behind.
	if st, err := s.Stage(ctx, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("stage at limit: %v", err)
	} else {
		st.Discard()
	}
	if _, err := s.Stage(ctx, bytes.NewReader(data), int64(len(data)-1)); !errors.Is(err, media.ErrTooLarge) {
		t.Fatalf("stage over limit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Stage(cctx, strings.NewReader("x"), -1); !errors.Is(err, context.Canceled) {
		t.Fatalf("stage with cancelled ctx: %v", err)
	}
	if n := countFiles(t, filepath.Join(dir, "tmp")); n != 0 {
		t.Fatalf("%d files left in tmp after failed stages", n)
	}

	// Remove keeps content that is still referenced.
	if err := s.Remove(ctx, want, func(context.Context) (bool, error) { return true, nil }); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Open(ctx, want); err != nil {
		t.Fatalf("referenced content removed: %v", err)
	} else {
		c.Close()
	}
	// A reference that appears while Remove runs (an upload of the same
	// content committing) also keeps it.
	if err := s.Remove(ctx, want, func(context.Context) (bool, error) {
		if _, err := s.Open(ctx, want); !errors.Is(err, media.ErrNoContent) {
			t.Errorf("content still reachable while Remove checks references: %v", err)
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Open(ctx, want); err != nil {
		t.Fatalf("content lost: %v", err)
	} else {
		c.Close()
	}
	if err := s.Remove(ctx, want, func(context.Context) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, want); !errors.Is(err, media.ErrNoContent) {
		t.Fatalf("open after remove: %v", err)
	}
	if n := countFiles(t, dir); n != 0 {
		t.Fatalf("%d files left after remove", n)
	}
	// Hashes are validated: no path can be smuggled in.
	if _, err := s.Open(ctx, "../../etc/passwd"); !errors.Is(err, media.ErrNoContent) {
		t.Fatalf("open of a path: %v", err)
	}
}

// An upload that publishes content while a delete of the same content is
// between its two steps must not lose it: the upload publishes again
// after its row commits.
func TestLocalStorePublishAfterConcurrentRemove(t *testing.T) {
	ctx := t.Context()
	s, err := media.NewLocalStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("shared content")
	st, err := s.Stage(ctx, bytes.NewReader(data), -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Publish(); err != nil {
		t.Fatal(err)
	}
	// A delete whose reference check ran before the upload's row existed.
	if err := s.Remove(ctx, st.SHA256(), func(context.Context) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	// The upload's row commits now, then it publishes again.
	if err := st.Publish(); err != nil {
		t.Fatal(err)
	}
	st.Discard()
	c, err := s.Open(ctx, st.SHA256())
	if err != nil {
		t.Fatalf("content lost: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("content = %q", got)
	}
}
