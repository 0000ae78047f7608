// Package bus is how Skiff services talk over NATS JetStream: the names of
// streams, subjects, consumers and KV buckets, publishing and decoding
// protobuf events with their trace context in NATS headers, a bounded
// worker loop over a pull consumer, and the conversion-record bucket.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// Names shared by every publisher and consumer.
const (
	// StreamPushes holds conversion requests until a converter acks them.
	StreamPushes = "SKIFF_PUSHES"
	// SubjectImagePushed carries skiffv1.ImagePushed.
	SubjectImagePushed = "skiff.image.pushed"

	// StreamConversions keeps conversion outcomes for a week, so a client
	// that connects late still sees what happened.
	StreamConversions = "SKIFF_CONVERSIONS"
	// SubjectCompleted carries skiffv1.ConversionCompleted.
	SubjectCompleted = "skiff.conversion.completed"
	// SubjectFailed carries skiffv1.ConversionFailed.
	SubjectFailed      = "skiff.conversion.failed"
	subjectConversions = "skiff.conversion.>"

	// ConsumerConverter is the durable consumer converter workers share.
	ConsumerConverter = "converter"
	// BucketConversions holds one conversion.Record per source digest.
	BucketConversions = "skiff-conversions"

	// HeaderType names the protobuf message type of a payload, so a
	// decoder can refuse a message of the wrong type instead of
	// misreading its fields.
	HeaderType = "Skiff-Type"
)

// DuplicateWindow is how long JetStream remembers message ids: a registry
// retrying a webhook, or a converter republishing an outcome after a crash,
// within it is stored once.
const DuplicateWindow = 10 * time.Minute

// Connect dials NATS and keeps reconnecting for the life of the
// connection, so a NATS restart pauses Skiff instead of stopping it.
func Connect(url, name string, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				slog.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { slog.Info("nats reconnected", "url", c.ConnectedUrl()) }),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}

// Bus publishes and consumes Skiff events on one connection.
type Bus struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// New wraps a connection.
func New(nc *nats.Conn) (*Bus, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Bus{nc: nc, js: js}, nil
}

// JetStream exposes the underlying context for callers that need a stream
// feature the Bus does not wrap.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Setup creates or updates the streams and the conversion bucket. Every
// service calls it at start, so no one has to provision NATS by hand.
func (b *Bus) Setup(ctx context.Context) error {
	streams := []jetstream.StreamConfig{{
		Name:        StreamPushes,
		Description: "Skiff conversion requests (registry pushes and skiffctl convert --remote)",
		Subjects:    []string{SubjectImagePushed},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  DuplicateWindow,
	}, {
		Name:        StreamConversions,
		Description: "Skiff conversion outcomes",
		Subjects:    []string{subjectConversions},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      7 * 24 * time.Hour,
		Duplicates:  DuplicateWindow,
	}}
	for _, cfg := range streams {
		if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("set up stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketConversions,
		Description: "Skiff conversion records, one per source manifest digest",
		History:     5,
		Storage:     jetstream.FileStorage,
	}); err != nil {
		return fmt.Errorf("set up bucket %s: %w", BucketConversions, err)
	}
	return nil
}

// Records opens the conversion-record bucket, which Setup must have
// created; if it has not, the error is ErrNoService.
func (b *Bus) Records(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := b.js.KeyValue(ctx, BucketConversions)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoService
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", BucketConversions, err)
	}
	return kv, nil
}

// Publish stores m on subject with the trace context of ctx. A non-empty
// msgID deduplicates within DuplicateWindow; the ack says whether m was a
// duplicate.
func (b *Bus) Publish(ctx context.Context, subject, msgID string, m proto.Message) (*jetstream.PubAck, error) {
	msg, err := newMsg(ctx, subject, m)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := b.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return ack, nil
}

// Decode unmarshals a JetStream message into m and returns ctx carrying the
// publisher's trace context.
func Decode(ctx context.Context, msg jetstream.Msg, m proto.Message) (context.Context, error) {
	return decode(ctx, msg.Subject(), msg.Headers(), msg.Data(), m)
}

// newMsg encodes m for subject with its type and the trace context of ctx
// in the headers, as decode expects them.
func newMsg(ctx context.Context, subject string, m proto.Message) (*nats.Msg, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(HeaderType, string(m.ProtoReflect().Descriptor().FullName()))
	telemetry.Inject(ctx, msg.Header)
	return msg, nil
}

// decode is Decode and DecodeMsg: JetStream and core NATS messages carry
// the same headers and payload behind different types.
func decode(ctx context.Context, subject string, h nats.Header, data []byte, m proto.Message) (context.Context, error) {
	want := m.ProtoReflect().Descriptor().FullName()
	if got := protoreflect.FullName(h.Get(HeaderType)); got != want {
		return ctx, fmt.Errorf("decode %s: message type is %q, want %q", subject, got, want)
	}
	if err := proto.Unmarshal(data, m); err != nil {
		return ctx, fmt.Errorf("decode %s: %w", subject, err)
	}
	return telemetry.Extract(ctx, h), nil
}

// ConverterConsumer creates or updates the durable consumer converter
// workers pull from. Redelivery limits are enforced by the worker from the
// attempts its conversion record counts, not by MaxDeliver, so that the
// last attempt always ends in a published failure even if the process
// dies during it, and waiting behind another conversion costs none.
func (b *Bus) ConverterConsumer(ctx context.Context, ackWait time.Duration) (jetstream.Consumer, error) {
	c, err := b.js.CreateOrUpdateConsumer(ctx, StreamPushes, jetstream.ConsumerConfig{
		Durable:       ConsumerConverter,
		Description:   "skiff converter workers",
		FilterSubject: SubjectImagePushed,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("set up consumer %s: %w", ConsumerConverter, err)
	}
	return c, nil
}

// fetchWait bounds one pull so idle workers notice cancellation promptly.
const fetchWait = time.Second

// Consume runs concurrency workers, each pulling one message at a time
// from c and passing it to handle, until ctx is done. A worker only pulls
// when it is free, so however long the backlog, at most concurrency
// messages are held in memory, and none waits out its ack deadline in a
// client buffer. handle must ack, nak or term the message.
func Consume(ctx context.Context, c jetstream.Consumer, concurrency int, handle func(context.Context, jetstream.Msg)) error {
	if concurrency < 1 {
		return fmt.Errorf("consume: concurrency %d < 1", concurrency)
	}
	done := make(chan struct{})
	for range concurrency {
		go func() {
			defer func() { done <- struct{}{} }()
			for ctx.Err() == nil {
				msg, err := c.Next(jetstream.FetchMaxWait(fetchWait))
				switch {
				case err == nil:
					handle(ctx, msg)
				case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
				default:
					// Disconnected or the server is restarting:
					// the client reconnects on its own.
					slog.Debug("consume: pull failed", "err", err)
					sleep(ctx, fetchWait)
				}
			}
		}()
	}
	for range concurrency {
		<-done
	}
	return ctx.Err()
}

// KeepAlive tells JetStream every interval that msg is still being worked
// on, until ctx is done, so a long conversion is not redelivered to another
// worker while a dead worker's message still is after one ack wait.
func KeepAlive(ctx context.Context, msg jetstream.Msg, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := msg.InProgress(); err != nil {
				slog.Debug("keep-alive failed", "subject", msg.Subject(), "err", err)
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
