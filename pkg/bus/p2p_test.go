package bus

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

func TestRequestRespond(t *testing.T) {
	b := startNATS(t)
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	sub, err := b.nc.QueueSubscribe("test.echo", QueueSchedulers, func(m *nats.Msg) {
		var req skiffv1.ImagePushed
		rctx, err := DecodeMsg(context.Background(), m, &req)
		if err != nil {
			Respond(rctx, m, &skiffv1.ConversionFailed{Reason: err.Error()})
			return
		}
		if got := trace.SpanContextFromContext(rctx).TraceID(); got != tid {
			Respond(rctx, m, &skiffv1.ConversionFailed{Reason: "trace lost"})
			return
		}
		Respond(rctx, m, &skiffv1.ConversionFailed{Source: req.GetRepository()})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var reply skiffv1.ConversionFailed
	if err := Request(rctx, b.nc, "test.echo", &skiffv1.ImagePushed{Repository: "app"}, &reply); err != nil {
		t.Fatal(err)
	}
	if reply.GetSource() != "app" || reply.GetReason() != "" {
		t.Fatalf("reply %+v", &reply)
	}
	// A reply of the wrong type is refused, not misread.
	var wrong skiffv1.ImagePushed
	if err := Request(rctx, b.nc, "test.echo", &skiffv1.ImagePushed{}, &wrong); err == nil || !strings.Contains(err.Error(), "message type") {
		t.Fatalf("wrong reply type: %v", err)
	}
	// Nobody listening: an error at once, not a hang.
	start := time.Now()
	if err := Request(rctx, b.nc, "test.nobody", &skiffv1.ImagePushed{}, &reply); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("request without responders: %v after %s", err, time.Since(start))
	}
	if err := Send(ctx, b.nc, "test.fire", &skiffv1.ImagePushed{}); err != nil {
		t.Fatal(err)
	}
}
