package bus

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// Outcome is one conversion.completed or conversion.failed event, or,
// with Err set, why Outcomes stopped before its context ended.
type Outcome struct {
	Seq       uint64 // stream sequence
	Completed *skiffv1.ConversionCompleted
	Failed    *skiffv1.ConversionFailed
	// Err is set only on the last value sent before the channel closes,
	// when reading the stream failed while the context was still live.
	// Its other fields are then empty.
	Err error
}

// SourceDigest is the digest of the source the outcome is about.
func (o Outcome) SourceDigest() string {
	if o.Completed != nil {
		return o.Completed.GetSourceDigest()
	}
	return o.Failed.GetSourceDigest()
}

// Outcomes streams conversion outcomes, from the start of the stream when
// fromStart is set and otherwise only new ones, until ctx is done. It reads
// through an ordered ephemeral consumer, so nothing is acked and many
// watchers can run at once. If the stream ends for any other reason, the
// channel's last value carries the error in Err before it closes; after
// ctx ends it just closes.
func (b *Bus) Outcomes(ctx context.Context, fromStart bool) (<-chan Outcome, error) {
	policy := jetstream.DeliverNewPolicy
	if fromStart {
		policy = jetstream.DeliverAllPolicy
	}
	c, err := b.js.OrderedConsumer(ctx, StreamConversions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{SubjectCompleted, SubjectFailed},
		DeliverPolicy:  policy,
	})
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", StreamConversions, err)
	}
	it, err := c.Messages()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", StreamConversions, err)
	}
	out := make(chan Outcome)
	stop := context.AfterFunc(ctx, it.Stop)
	go func() {
		defer close(out)
		for {
			msg, err := it.Next()
			if err != nil {
				// Either ctx ended and stopped the iterator, which is
				// no news, or the stream ended on its own: then the
				// consumer goes now, not when ctx ends, which may be
				// never, and the watcher learns why.
				if stop() {
					it.Stop()
				}
				if ctx.Err() == nil {
					select {
					case out <- Outcome{Err: fmt.Errorf("watch %s: %w", StreamConversions, err)}:
					case <-ctx.Done():
					}
				}
				return
			}
			o, err := decodeOutcome(ctx, msg)
			if err != nil {
				slog.Warn("skipping undecodable conversion event", "err", err)
				continue
			}
			select {
			case out <- o:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func decodeOutcome(ctx context.Context, msg jetstream.Msg) (Outcome, error) {
	var o Outcome
	if md, err := msg.Metadata(); err == nil {
		o.Seq = md.Sequence.Stream
	}
	var err error
	switch msg.Subject() {
	case SubjectCompleted:
		o.Completed = &skiffv1.ConversionCompleted{}
		_, err = Decode(ctx, msg, o.Completed)
	case SubjectFailed:
		o.Failed = &skiffv1.ConversionFailed{}
		_, err = Decode(ctx, msg, o.Failed)
	default:
		err = fmt.Errorf("unexpected subject %s", msg.Subject())
	}
	return o, err
}
