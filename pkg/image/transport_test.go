package image

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// TestTransportCarriesTraceContext: a registry request made under a span
// is a span of its own, and carries the trace to the registry.
func TestTransportCarriesTraceContext(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(telemetry.Propagator)
	defer func() {
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	}()

	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Traceparent")
	}))
	defer srv.Close()

	ctx, span := tp.Tracer("test").Start(context.Background(), "convert")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	span.End()

	tp.ForceFlush(context.Background())
	traceID := span.SpanContext().TraceID().String()
	if h := <-got; !strings.Contains(h, traceID) {
		t.Fatalf("registry saw traceparent %q, want trace %s", h, traceID)
	}
	var client bool
	for _, s := range spans.Ended() {
		if s.Parent().SpanID() == span.SpanContext().SpanID() && s.SpanKind().String() == "client" {
			client = true
		}
	}
	if !client {
		t.Fatal("the request made no client span under its caller's")
	}
}
