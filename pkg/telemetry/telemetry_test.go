package telemetry

import (
	"context"
	"net/http"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func remoteContext(t *testing.T) (context.Context, trace.TraceID) {
	t.Helper()
	tid, err := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	if err != nil {
		t.Fatal(err)
	}
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithRemoteSpanContext(context.Background(), sc), tid
}

func TestNATSHeadersRoundTrip(t *testing.T) {
	ctx, tid := remoteContext(t)
	h := map[string][]string{}
	Inject(ctx, h)
	// NATS header names are case-sensitive: the W3C key must stay lower case.
	if h["traceparent"] == nil {
		t.Fatalf("no lower-case traceparent header in %v", h)
	}
	if got := trace.SpanContextFromContext(Extract(context.Background(), h)).TraceID(); got != tid {
		t.Errorf("extracted trace %s, want %s", got, tid)
	}
	if sc := trace.SpanContextFromContext(Extract(context.Background(), map[string][]string{})); sc.IsValid() {
		t.Error("empty headers yielded a valid span context")
	}
}

func TestHTTPHeadersRoundTrip(t *testing.T) {
	ctx, tid := remoteContext(t)
	h := http.Header{}
	InjectHTTP(ctx, h)
	if got := trace.SpanContextFromContext(ExtractHTTP(context.Background(), h)).TraceID(); got != tid {
		t.Errorf("extracted trace %s, want %s", got, tid)
	}
}

func TestSetupWithoutEndpointIsNoop(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	if Enabled() {
		t.Fatal("Enabled with no endpoint")
	}
	shutdown, err := Setup(context.Background(), "test", "v0")
	if err != nil {
		t.Fatal(err)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	if !Enabled() {
		t.Fatal("not Enabled with an endpoint")
	}
	shutdown, err = Setup(context.Background(), "test", "v0")
	if err != nil {
		t.Fatal(err)
	}
	_, span := Tracer("test").Start(context.Background(), "span")
	if !span.SpanContext().IsValid() {
		t.Error("span from the OTLP provider has no valid context")
	}
	span.End()
	// Nothing listens on the endpoint: shutdown reports the failed export
	// or succeeds with nothing to flush, but must return.
	_ = shutdown(context.Background())
}
