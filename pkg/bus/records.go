package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/skiff-dev/skiff/pkg/conversion"
)

// ErrNoService means the conversion bucket does not exist: no converter
// has ever run against this NATS server.
var ErrNoService = errors.New("no conversion records: no converter service has set up this NATS server")

// ListRecords returns every conversion record.
func (b *Bus) ListRecords(ctx context.Context) ([]*conversion.Record, error) {
	kv, err := b.Records(ctx)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", BucketConversions, err)
	}
	defer w.Stop()
	var recs []*conversion.Record
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list %s: %w", BucketConversions, ctx.Err())
		case e := <-w.Updates():
			// A nil entry marks the end of the current values.
			if e == nil {
				return recs, nil
			}
			rec, err := conversion.Unmarshal(e.Value())
			if err != nil {
				return nil, fmt.Errorf("record %s: %w", e.Key(), err)
			}
			recs = append(recs, rec)
		}
	}
}

// WatchRecord calls fn with the record of digest now (if any) and after
// every change, until fn returns done or an error, or ctx ends.
func (b *Bus) WatchRecord(ctx context.Context, digest string, fn func(*conversion.Record) (done bool, err error)) error {
	key, err := conversion.Key(digest)
	if err != nil {
		return err
	}
	kv, err := b.Records(ctx)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, key, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch record %s: %w", key, err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch record %s: watcher stopped", key)
			}
			if e == nil {
				continue
			}
			rec, err := conversion.Unmarshal(e.Value())
			if err != nil {
				return fmt.Errorf("record %s: %w", key, err)
			}
			if done, err := fn(rec); done || err != nil {
				return err
			}
		}
	}
}

// ErrNoRecord means no conversion of a digest was ever requested.
var ErrNoRecord = errors.New("no conversion record")

// Record returns the conversion record of a source digest.
func (b *Bus) Record(ctx context.Context, digest string) (*conversion.Record, error) {
	key, err := conversion.Key(digest)
	if err != nil {
		return nil, err
	}
	kv, err := b.Records(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", digest, ErrNoRecord)
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", key, err)
	}
	return conversion.Unmarshal(e.Value())
}
