// Package media is the media repository: uploads (plain and MSC2246
// asynchronous), downloads, thumbnails, the media config, the admin media
// APIs and the cleanup of unused reserved ids; over federation, the
// authenticated media endpoints other servers download our media from,
// and the cache of other servers' media (remote.go). File contents go to
// a Store, addressed by their SHA-256 and always streamed; metadata lives
// in the database (tables media and media_thumbnails, remote media under
// its server's name).
package media

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
)

// ErrTooLarge is returned by Store.Stage when the content exceeds the limit.
var ErrTooLarge = errors.New("content exceeds the size limit")

// ErrNoContent is returned by Store.Open for a hash the store does not hold.
var ErrNoContent = errors.New("no such content in the media store")

// Store holds file contents by SHA-256. The protocol with the metadata in
// the database is:
//
//   - an upload stages its content (streamed to a temporary place while
//     hashed), Publishes it (the content is then reachable by hash),
//     commits its row, then Publishes again and Discards: a concurrent
//     Remove of the same content that ran between the two cannot leave the
//     committed row without content;
//   - a delete commits first, then calls Remove with a check that looks
//     for remaining references in the database; Remove takes the content
//     out of reach before it checks and puts it back if a reference
//     appeared, so it never deletes content a committed row needs.
type Store interface {
	// Stage reads r to the end into a temporary place, hashing it. More
	// than limit bytes (limit >= 0) fail with ErrTooLarge. ctx ending
	// aborts the copy.
	Stage(ctx context.Context, r io.Reader, limit int64) (Staged, error)
	// Open returns the content with the given hash (ErrNoContent if none).
	Open(ctx context.Context, sha256 string) (Content, error)
	// Remove deletes the content unless referenced reports true.
	Remove(ctx context.Context, sha256 string, referenced func(ctx context.Context) (bool, error)) error
}

// Staged is content written to the store but not yet reachable by hash.
type Staged interface {
	SHA256() string
	Size() int64
	// Publish makes the content reachable by its hash; calling it again is
	// harmless.
	Publish() error
	// Discard drops the staged copy (the published content stays).
	Discard() error
}

// Content is stored content opened for reading.
type Content interface {
	io.ReadSeekCloser
	Size() int64
}

// LocalStore keeps content in a local directory (media_store_path):
// <root>/content/ab/cd/<sha256>, temporary files in <root>/tmp. Several
// processes on one host may share the directory.
type LocalStore struct {
	root string
}

var _ Store = (*LocalStore)(nil)

var hashPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// NewLocalStore creates the directories under root if needed.
func NewLocalStore(root string) (*LocalStore, error) {
	for _, d := range []string{"content", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o750); err != nil {
			return nil, fmt.Errorf("create media store directory: %w", err)
		}
	}
	return &LocalStore{root: root}, nil
}

func (s *LocalStore) path(sha string) string {
	return filepath.Join(s.root, "content", sha[0:2], sha[2:4], sha)
}

func (s *LocalStore) tempPath(kind string) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(s.root, "tmp", kind+"-"+hex.EncodeToString(b[:])), nil
}

// Stage implements Store.
func (s *LocalStore) Stage(ctx context.Context, r io.Reader, limit int64) (Staged, error) {
	tmp, err := s.tempPath("upload")
	if err != nil {
		return nil, fmt.Errorf("stage media: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("stage media: %w", err)
	}
	h := sha256.New()
	src := &ctxReader{ctx: ctx, r: r}
	var n int64
	if limit >= 0 {
		// One byte more than allowed tells "exactly limit" from "more".
		n, err = io.Copy(io.MultiWriter(f, h), io.LimitReader(src, limit+1))
		if err == nil && n > limit {
			err = ErrTooLarge
		}
	} else {
		n, err = io.Copy(io.MultiWriter(f, h), src)
	}
	if err == nil {
		// The content must be on disk before a row that names it commits.
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("stage media: %w", err)
	}
	return &localStaged{store: s, tmp: tmp, sha: hex.EncodeToString(h.Sum(nil)), size: n}, nil
}

type localStaged struct {
	store *LocalStore
	tmp   string
	sha   string
	size  int64
}

func (st *localStaged) SHA256() string { return st.sha }
func (st *localStaged) Size() int64    { return st.size }

// Publish hard-links the staged file into place: the staged copy stays, so
// Publish can run again after the row commits (see Store).
func (st *localStaged) Publish() error {
	final := st.store.path(st.sha)
	if _, err := os.Stat(final); err == nil {
		return nil
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("publish media %s: %w", st.sha, err)
	}
	if err := os.Link(st.tmp, final); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("publish media %s: %w", st.sha, err)
	}
	return syncDir(dir)
}

func (st *localStaged) Discard() error {
	if err := os.Remove(st.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("discard staged media: %w", err)
	}
	return nil
}

type localContent struct {
	*os.File
	size int64
}

func (c localContent) Size() int64 { return c.size }

// Open implements Store.
func (s *LocalStore) Open(_ context.Context, sha string) (Content, error) {
	if !hashPattern.MatchString(sha) {
		return nil, ErrNoContent
	}
	f, err := os.Open(s.path(sha))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoContent
	}
	if err != nil {
		return nil, fmt.Errorf("open media %s: %w", sha, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open media %s: %w", sha, err)
	}
	return localContent{File: f, size: fi.Size()}, nil
}

// Remove implements Store: it moves the file aside, asks referenced, and
// either deletes it or moves it back.
func (s *LocalStore) Remove(ctx context.Context, sha string, referenced func(ctx context.Context) (bool, error)) error {
	if !hashPattern.MatchString(sha) {
		return nil
	}
	grave, err := s.tempPath("remove")
	if err != nil {
		return fmt.Errorf("remove media %s: %w", sha, err)
	}
	final := s.path(sha)
	if err := os.Rename(final, grave); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove media %s: %w", sha, err)
	}
	ref, err := referenced(ctx)
	if err != nil || ref {
		// An upload of the same content may have published again
		// meanwhile; the contents are identical, so replacing is fine.
		if rerr := os.Rename(grave, final); rerr != nil {
			return fmt.Errorf("restore media %s: %w", sha, rerr)
		}
		if err != nil {
			return fmt.Errorf("remove media %s: check references: %w", sha, err)
		}
		return nil
	}
	if err := os.Remove(grave); err != nil {
		return fmt.Errorf("remove media %s: %w", sha, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// ctxReader stops a copy when its context ends (a client that went away,
// a shutting-down server).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
