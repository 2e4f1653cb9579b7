package app

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"ganglion/internal/tracing"
)

// Option adjusts New.
type Option func(*Process)

// WithTracer replaces the tracer the opentelemetry section would build
// (tests export to memory).
func WithTracer(t *tracing.Tracer) Option { return func(p *Process) { p.tracer = t } }

// startTracing builds the tracer unless an option gave one, and traces the
// database's transactions.
func (p *Process) startTracing(ctx context.Context) error {
	if p.tracer == nil {
		t, err := tracing.New(ctx, p.cfg.InstanceName(), p.cfg.OpenTelemetry)
		if err != nil {
			return err
		}
		p.tracer = t
	}
	if !p.tracer.Enabled() {
		return nil
	}
	p.db.SetTxSpan(func(ctx context.Context, name string) func(error) {
		_, span := p.tracer.Start(ctx, "db "+name, trace.SpanKindInternal, attribute.String("db.transaction", name))
		return func(err error) {
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}
	})
	return nil
}

// traceRequest starts the server span of a request (continuing the trace
// of its traceparent header, from the router or another instance); end
// records the status code. Without tracing it returns r unchanged.
func (p *Process) traceRequest(r *http.Request, class string) (*http.Request, func(code int)) {
	if !p.tracer.Enabled() {
		return r, func(int) {}
	}
	ctx := p.tracer.Extract(r.Context(), r.Header)
	ctx, span := p.tracer.Start(ctx, r.Method+" "+class, trace.SpanKindServer,
		attribute.String("http.request.method", r.Method), attribute.String("ganglion.class", class))
	return r.WithContext(ctx), func(code int) {
		span.SetAttributes(attribute.Int("http.response.status_code", code))
		if code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(code))
		}
		span.End()
	}
}
