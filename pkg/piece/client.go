package piece

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// Client reads pieces from peers' Servers. Timeouts come from the
// caller's context: a dead peer must cost a bounded wait, never a read.
type Client struct {
	http *http.Client
}

// NewClient returns a Client using hc, or a client of its own when nil.
func NewClient(hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: newTransport()}
	}
	return &Client{http: hc}
}

// newTransport bounds what a caller's context may leave open: a peer that
// vanished (its node gone, SYNs unanswered) fails the dial in seconds, so
// the caller moves on to the next parent within its deadline; keep-alives
// find pooled connections to dead peers; and connections to peers no
// longer read from are closed rather than kept for the process's life.
func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	}
}

// Get reads exactly size bytes of blob at off from the server at addr
// (host:port). A server that does not hold them yet waits up to wait for
// them to arrive (0: it answers at once).
func (c *Client) Get(ctx context.Context, addr string, blob bootstrap.Digest, off, size int64, wait time.Duration) ([]byte, error) {
	buf := make([]byte, size)
	if err := c.GetInto(ctx, addr, blob, off, buf, wait); err != nil {
		return nil, err
	}
	return buf, nil
}

// GetInto is Get into buf, reading exactly len(buf) bytes: the parts of a
// range read from several servers land in one buffer.
func (c *Client) GetInto(ctx context.Context, addr string, blob bootstrap.Digest, off int64, buf []byte, wait time.Duration) error {
	size := int64(len(buf))
	q := url.Values{"offset": {strconv.FormatInt(off, 10)}, "size": {strconv.FormatInt(size, 10)}}
	if wait > 0 {
		q.Set("wait", strconv.FormatInt(min(wait, MaxWait).Milliseconds(), 10))
	}
	u := url.URL{Scheme: "http", Host: addr, Path: Path + blob.Hex(), RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("get piece %s [%d,+%d) from %s: %w", blob, off, size, addr, err)
	}
	telemetry.InjectHTTP(ctx, req.Header)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("get piece %s [%d,+%d) from %s: %w", blob, off, size, addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("get piece %s [%d,+%d) from %s: %s: %s", blob, off, size, addr, resp.Status, msg)
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return fmt.Errorf("get piece %s [%d,+%d) from %s: %w", blob, off, size, addr, err)
	}
	if n, _ := resp.Body.Read(make([]byte, 1)); n > 0 {
		return fmt.Errorf("get piece %s [%d,+%d) from %s: longer than asked", blob, off, size, addr)
	}
	return nil
}
