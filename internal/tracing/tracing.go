// Package tracing gives a process its OpenTelemetry tracer (the
// `opentelemetry:` config section): one provider per process, whose
// resource names the instance so every span says where it ran, and W3C
// trace-context propagation over HTTP (router → worker, HTTP replication).
// Disabled, every method is a cheap no-op and callers skip span work.
package tracing

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"ganglion/internal/config"
)

// Tracer starts spans for one process.
type Tracer struct {
	enabled  bool
	tracer   trace.Tracer
	prop     propagation.TraceContext
	shutdown func(context.Context) error
}

// Disabled is a tracer that records nothing.
func Disabled() *Tracer {
	return &Tracer{tracer: noop.NewTracerProvider().Tracer("ganglion"), shutdown: func(context.Context) error { return nil }}
}

// New builds the tracer of the process called instance from its config.
func New(ctx context.Context, instance string, c config.OpenTelemetry) (*Tracer, error) {
	if !c.Enabled {
		return Disabled(), nil
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("opentelemetry.endpoint: %w", err)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(u.Host)}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	if u.Path != "" && u.Path != "/" {
		opts = append(opts, otlptracehttp.WithURLPath(u.Path))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("start the OTLP exporter: %w", err)
	}
	sampler := sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.Ratio()))
	return newTracer(instance, sdktrace.WithBatcher(exp), sampler), nil
}

// NewWithExporter is a tracer that samples everything and hands each span
// to exp as it ends (tests use tracetest's in-memory exporter).
func NewWithExporter(instance string, exp sdktrace.SpanExporter) *Tracer {
	return newTracer(instance, sdktrace.WithSyncer(exp), sdktrace.AlwaysSample())
}

func newTracer(instance string, export sdktrace.TracerProviderOption, sampler sdktrace.Sampler) *Tracer {
	res := resource.NewSchemaless(attribute.String("service.name", "ganglion"),
		attribute.String("service.instance.id", instance))
	tp := sdktrace.NewTracerProvider(export, sdktrace.WithSampler(sampler), sdktrace.WithResource(res))
	return &Tracer{enabled: true, tracer: tp.Tracer("ganglion"), shutdown: tp.Shutdown}
}

// Enabled says whether spans are recorded; callers skip their span work
// (and its allocations) when not.
func (t *Tracer) Enabled() bool { return t != nil && t.enabled }

// Start starts a span as a child of ctx's.
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// Extract continues the trace an incoming request's traceparent header
// names.
func (t *Tracer) Extract(ctx context.Context, h http.Header) context.Context {
	return t.prop.Extract(ctx, propagation.HeaderCarrier(h))
}

// Inject writes ctx's span into an outgoing request's traceparent header.
func (t *Tracer) Inject(ctx context.Context, h http.Header) {
	t.prop.Inject(ctx, propagation.HeaderCarrier(h))
}

// Shutdown flushes the spans not yet exported.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.shutdown(ctx) }

// TraceID is the trace id of ctx's span, "" without one (for log lines).
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}
