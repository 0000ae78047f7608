package telemetry

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts NATS message headers (nats.Header has this
// underlying type) to the propagation API. Unlike propagation.HeaderCarrier
// it keeps keys exactly as written: NATS header names are case-sensitive,
// and W3C trace-context keys are lower case.
type HeaderCarrier map[string][]string

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of key.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the trace context of ctx into NATS headers h.
func Inject(ctx context.Context, h map[string][]string) {
	Propagator.Inject(ctx, HeaderCarrier(h))
}

// Extract returns ctx carrying the trace context found in NATS headers h.
func Extract(ctx context.Context, h map[string][]string) context.Context {
	return Propagator.Extract(ctx, HeaderCarrier(h))
}

// InjectHTTP writes the trace context of ctx into HTTP headers h.
func InjectHTTP(ctx context.Context, h http.Header) {
	Propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// ExtractHTTP returns ctx carrying the trace context of an incoming request.
func ExtractHTTP(ctx context.Context, h http.Header) context.Context {
	return Propagator.Extract(ctx, propagation.HeaderCarrier(h))
}
