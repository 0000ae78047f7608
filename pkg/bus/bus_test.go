package bus

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/skiff-dev/skiff/internal/testenv"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// startNATS runs an embedded JetStream server, set up as every service
// sets it up; the converter's integration tests use a real nats-server
// process, this is for the bus's own logic.
func startNATS(t *testing.T) *Bus {
	t.Helper()
	b := freshNATS(t)
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Setup must be idempotent: every service calls it.
	if err := b.Setup(context.Background()); err != nil {
		t.Fatalf("second Setup: %v", err)
	}
	return b
}

// freshNATS runs an embedded JetStream server no service has set up.
func freshNATS(t *testing.T) *Bus {
	t.Helper()
	nc, err := Connect(testenv.StartEmbeddedNATS(t, true), "bus-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPublishDeduplicatesAndCarriesTrace(t *testing.T) {
	b := startNATS(t)
	ctx := context.Background()
	tid, _ := trace.TraceIDFromHex("0102030405060708090a0b0c0d0e0f10")
	sid, _ := trace.SpanIDFromHex("0102030405060708")
	sctx := trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	req := &skiffv1.ImagePushed{Registry: "r", Repository: "a", Tag: "1", Digest: "sha256:aa"}
	for i, wantDup := range []bool{false, true} {
		ack, err := b.Publish(sctx, SubjectImagePushed, "id-1", req)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Duplicate != wantDup {
			t.Errorf("publish %d: duplicate = %v, want %v", i, ack.Duplicate, wantDup)
		}
	}
	c, err := b.ConverterConsumer(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := &skiffv1.ImagePushed{}
	gctx, err := Decode(ctx, msg, got)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetDigest() != "sha256:aa" || got.GetTag() != "1" {
		t.Errorf("decoded %v", got)
	}
	if sc := trace.SpanContextFromContext(gctx); sc.TraceID() != tid {
		t.Errorf("trace id %s, want %s", sc.TraceID(), tid)
	}
	// The wrong message type is refused rather than misread.
	if _, err := Decode(ctx, msg, &skiffv1.ConversionFailed{}); err == nil {
		t.Error("decoding ImagePushed as ConversionFailed succeeded")
	}
	if err := msg.Ack(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(jetstream.FetchMaxWait(500 * time.Millisecond)); err == nil {
		t.Error("duplicate publish was delivered")
	}
}

// TestConsumeBoundsInFlight publishes a backlog of 1000 requests and checks
// that Consume never holds more than concurrency of them at once and
// handles each exactly once.
func TestConsumeBoundsInFlight(t *testing.T) {
	b := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const backlog, concurrency = 1000, 3
	for i := range backlog {
		req := &skiffv1.ImagePushed{Registry: "r", Repository: "a", Tag: "t", Digest: "sha256:aa"}
		if _, err := b.Publish(ctx, SubjectImagePushed, "req-"+strconv.Itoa(i), req); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.ConverterConsumer(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var inFlight, maxInFlight, handled atomic.Int64
	seen := sync.Map{}
	var dups atomic.Int64
	errc := make(chan error, 1)
	go func() {
		errc <- Consume(ctx, c, concurrency, func(ctx context.Context, msg jetstream.Msg) {
			n := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			md, _ := msg.Metadata()
			if _, loaded := seen.LoadOrStore(md.Sequence.Stream, true); loaded {
				dups.Add(1)
			}
			inFlight.Add(-1)
			if err := msg.DoubleAck(ctx); err != nil {
				t.Errorf("ack: %v", err)
			}
			if handled.Add(1) == backlog {
				cancel()
			}
		})
	}()
	<-errc
	if handled.Load() != backlog || dups.Load() != 0 {
		t.Errorf("handled %d messages with %d duplicates, want %d and 0", handled.Load(), dups.Load(), backlog)
	}
	if m := maxInFlight.Load(); m > concurrency || m < 1 {
		t.Errorf("max in flight %d, want 1..%d", m, concurrency)
	}
	if err := Consume(context.Background(), c, 0, nil); err == nil {
		t.Error("Consume with concurrency 0 succeeded")
	}
}

func TestOutcomes(t *testing.T) {
	b := startNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.Publish(ctx, SubjectCompleted, "c1", &skiffv1.ConversionCompleted{SourceDigest: "sha256:aa", NewBytes: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, SubjectCompleted, "c1", &skiffv1.ConversionCompleted{SourceDigest: "sha256:aa", NewBytes: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, SubjectFailed, "f1", &skiffv1.ConversionFailed{SourceDigest: "sha256:bb", Reason: "boom"}); err != nil {
		t.Fatal(err)
	}
	out, err := b.Outcomes(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	first, second := <-out, <-out
	if first.Completed.GetNewBytes() != 7 || first.SourceDigest() != "sha256:aa" {
		t.Errorf("first outcome %+v", first)
	}
	if second.Failed.GetReason() != "boom" || second.SourceDigest() != "sha256:bb" {
		t.Errorf("second outcome %+v (a duplicate completed event was stored?)", second)
	}
	cancel()
	for o := range out {
		if o.Err != nil {
			t.Errorf("cancelling the watch reported %v", o.Err)
		}
	}
}

// TestOutcomesReportsEnd: when the event stream ends on its own, the
// watcher learns why and the consumer is released without waiting for
// the context, which may never end.
func TestOutcomesReportsEnd(t *testing.T) {
	it := &endedIter{err: errors.New("consumer gone"), stopped: make(chan struct{})}
	b := &Bus{js: orderedJS{c: iterConsumer{it: it}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := b.Outcomes(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := <-out
	if !ok || !errors.Is(o.Err, it.err) {
		t.Fatalf("got %+v, open %v; want the stream's error", o, ok)
	}
	if o, ok := <-out; ok {
		t.Fatalf("value %+v after the error", o)
	}
	select {
	case <-it.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("iterator not stopped before the context ended")
	}
}

// orderedJS hands out c as every ordered consumer.
type orderedJS struct {
	jetstream.JetStream
	c jetstream.Consumer
}

func (js orderedJS) OrderedConsumer(context.Context, string, jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	return js.c, nil
}

type iterConsumer struct {
	jetstream.Consumer
	it jetstream.MessagesContext
}

func (c iterConsumer) Messages(...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) {
	return c.it, nil
}

// endedIter is a message iterator whose stream has ended with err.
type endedIter struct {
	jetstream.MessagesContext
	err     error
	once    sync.Once
	stopped chan struct{}
}

func (it *endedIter) Next(...jetstream.NextOpt) (jetstream.Msg, error) { return nil, it.err }
func (it *endedIter) Stop()                                            { it.once.Do(func() { close(it.stopped) }) }
