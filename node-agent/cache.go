package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kilnfaas/kiln/builder/image"
	"github.com/kilnfaas/kiln/store/imagestore"
)

// ImageFetcher gets an image's bytes by digest; the gateway's image store
// (NATS object store) is one. The agent verifies what it returns. A
// missing image is an error matching imagestore.ErrNotFound; any other
// error is taken for the store failing, and the fetch is retried.
type ImageFetcher interface {
	Fetch(ctx context.Context, digest string) ([]byte, error)
}

// decodedKeep is how many decoded images stay in memory, so that the hot
// functions' cold starts skip the disk read, the hash and the untar.
const decodedKeep = 16

// imageCache keeps images on disk under dir, one file per digest, and the
// most recently used ones decoded in memory. Files are verified against
// their digest every time they are read: a disk that flipped a bit, or a
// half-written file, is deleted and fetched again.
type imageCache struct {
	dir      string
	fetch    ImageFetcher
	maxBytes int64         // the files together stay within this; the least recently used go first
	window   time.Duration // fetchWindow; shorter in tests

	mu       sync.Mutex
	decoded  map[string]*image.Image
	order    []string // decoded keys, least recently used first
	inflight map[string]*flight
}

type flight struct {
	done chan struct{}
	img  *image.Image
	err  error
}

// DefaultCacheBytes bounds the on-disk image cache when Config.CacheBytes is 0.
const DefaultCacheBytes = 10 << 30

func newImageCache(dir string, f ImageFetcher, maxBytes int64) (*imageCache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nodeagent: image cache: %w", err)
	}
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	c := &imageCache{dir: dir, fetch: f, maxBytes: maxBytes, window: fetchWindow, decoded: map[string]*image.Image{}, inflight: map[string]*flight{}}
	c.trim("")
	return c, nil
}

// trim removes the least recently used image files (by modification time,
// which a read refreshes) until the rest fit in maxBytes; keep, the file
// just written, always stays. Removing a file in use is harmless: it was
// decoded when read, and is fetched again when next needed.
func (c *imageCache) trim(keep string) {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	type file struct {
		path string
		size int64
		used time.Time
	}
	var files []file
	var total int64
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".img") || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		files = append(files, file{filepath.Join(c.dir, e.Name()), info.Size(), info.ModTime()})
		total += info.Size()
	}
	sort.Slice(files, func(i, j int) bool { return files[i].used.Before(files[j].used) })
	for _, f := range files {
		if total <= c.maxBytes {
			return
		}
		if f.path == keep {
			continue
		}
		if os.Remove(f.path) == nil {
			total -= f.size
		}
	}
}

// path is safe because digests are checked with image.CheckDigest first.
func (c *imageCache) path(digest string) string {
	return filepath.Join(c.dir, strings.Replace(digest, ":", "-", 1)+".img")
}

// get returns the decoded image, fetching it at most once at a time per
// digest however many invocations ask. Errors wrap ErrBadImage, or
// ErrImageStore when the store could not be read.
func (c *imageCache) get(ctx context.Context, digest string) (*image.Image, error) {
	if err := image.CheckDigest(digest); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	c.mu.Lock()
	if img, ok := c.decoded[digest]; ok {
		c.touchLocked(digest)
		c.mu.Unlock()
		return img, nil
	}
	if f, ok := c.inflight[digest]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.img, f.err
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for image %s: %w", ErrImageStore, digest, ctx.Err())
		}
	}
	f := &flight{done: make(chan struct{})}
	c.inflight[digest] = f
	c.mu.Unlock()

	// The load is not bound to one caller's context: others may wait on it.
	f.img, f.err = c.load(context.WithoutCancel(ctx), digest)
	c.mu.Lock()
	delete(c.inflight, digest)
	if f.err == nil {
		c.decoded[digest] = f.img
		c.touchLocked(digest)
	}
	c.mu.Unlock()
	close(f.done)
	return f.img, f.err
}

func (c *imageCache) touchLocked(digest string) {
	for i, d := range c.order {
		if d == digest {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
	c.order = append(c.order, digest)
	for len(c.order) > decodedKeep {
		delete(c.decoded, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *imageCache) load(ctx context.Context, digest string) (*image.Image, error) {
	p := c.path(digest)
	if data, err := os.ReadFile(p); err == nil {
		if image.Verify(data, digest) == nil {
			now := time.Now()
			os.Chtimes(p, now, now) // recently used: trimmed last
			return decode(data)
		}
		// Corrupt on disk: forget it and fetch a good copy.
		os.Remove(p)
	}
	data, err := c.fetchRetrying(ctx, digest)
	if err != nil {
		return nil, err
	}
	if err := image.Verify(data, digest); err != nil {
		return nil, fmt.Errorf("%w: the image store returned other bytes: %w", ErrBadImage, err)
	}
	img, err := decode(data)
	if err != nil {
		return nil, err
	}
	// Temp file + rename: a crash mid-write leaves no file under the
	// digest's name (and a torn one would fail Verify anyway).
	tmp, err := os.CreateTemp(c.dir, ".fetch-*")
	if err == nil {
		_, werr := tmp.Write(data)
		cerr := tmp.Close()
		if werr != nil || cerr != nil || os.Rename(tmp.Name(), p) != nil {
			os.Remove(tmp.Name())
		} else {
			c.trim(p)
		}
	}
	return img, nil
}

// fetchWindow bounds how long one image is fetched, retries included, while
// the store fails for a reason other than a missing image (NATS restarting,
// a network blip): long enough to ride out a reconnect, short against the
// caller's timeout plus the gateway's slack.
const fetchWindow = 8 * time.Second

// fetchRetrying fetches digest, retrying with backoff within fetchWindow
// unless the store says the image does not exist.
func (c *imageCache) fetchRetrying(ctx context.Context, digest string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.window)
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		data, err := c.fetch.Fetch(ctx, digest)
		switch {
		case err == nil:
			return data, nil
		case errors.Is(err, imagestore.ErrNotFound):
			return nil, fmt.Errorf("%w: fetching %s: %w", ErrBadImage, digest, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: fetching %s for %v: %w", ErrImageStore, digest, c.window, err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// maxReported bounds how many cached digests a heartbeat carries.
const maxReported = 1024

// digests lists the images in the on-disk cache (sorted, at most
// maxReported), for the scheduler's placement: a cold start on a node that
// has the image needs no fetch. A file is listed without being verified;
// a corrupt one is fetched again on use, which costs only time.
func (c *imageCache) digests() []string {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".img")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		d := strings.Replace(name, "-", ":", 1)
		if image.CheckDigest(d) != nil {
			continue
		}
		out = append(out, d)
		if len(out) == maxReported {
			break
		}
	}
	return out
}

func decode(data []byte) (*image.Image, error) {
	img, err := image.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	return img, nil
}
