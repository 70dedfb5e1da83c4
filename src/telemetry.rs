//! Traces with OpenTelemetry, exported over OTLP/HTTP (protobuf), off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other
//! standard `OTEL_*` variables (headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`) apply.
//!
//! Our own spans become OpenTelemetry spans: one per HTTP request and per tool call (tool,
//! principal kind and outcome, never arguments), and one per workflow execution and step,
//! agent run, LLM call and webhook delivery. A client's W3C `traceparent` (HTTP header or
//! the request's `_meta`) continues its trace; queued work stores the `traceparent` of the
//! call that queued it, so the work joins that trace whichever process runs it, and
//! outgoing requests (webhooks, LLM providers) carry theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;

/// Where a tool call's span hangs: under the HTTP request that carried it, or in the trace
/// the request's `_meta.traceparent` names (which wins); else under the current span.
#[derive(Clone, Default)]
pub struct Parent {
    pub span: Option<tracing::Span>,
    pub traceparent: Option<String>,
}

/// An HTTP request's span, for the tool calls it carries (put in the request's extensions).
#[derive(Clone)]
pub struct RequestSpan(pub tracing::Span);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Are traces exported?
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when the process ends.
pub struct Guard(Option<SdkTracerProvider>);

impl Guard {
    /// Sends what is still buffered (bounded by the exporter's timeout).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.0.take() {
            // Blocking: it waits for the export thread, whose request runs on this runtime.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(error) = provider.shutdown() {
                    tracing::warn!(%error, "traces: the last spans may not have been sent");
                }
            })
            .await;
        }
    }
}

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The tracing layer that exports our spans, when an OTLP endpoint is configured.
pub fn layer<S>() -> (Option<impl Layer<S>>, Guard)
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !configured() {
        return (None, Guard(None));
    }
    // rustls needs a process-wide provider; a second install is refused, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().build() {
        Ok(client) => Outgoing {
            client,
            runtime: tokio::runtime::Handle::current(),
        },
        Err(error) => {
            eprintln!("traces are off: {error}");
            return (None, Guard(None));
        }
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces are off: {error}");
            return (None, Guard(None));
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("agentcrm");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("agentcrm");
    ENABLED.store(true, Ordering::Relaxed);
    // Our spans only: the libraries' (sqlx, hyper, rmcp) would be noise at every call.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target("agentcrm", tracing::Level::INFO));
    (Some(layer), Guard(Some(provider)))
}

/// The W3C `traceparent` of the current span, when traces are on.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace `traceparent` names (sent by a client, or stored with
/// queued work). A malformed or missing value leaves the span where it is.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|_| enabled()) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), value.trim().to_owned())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// `request` with the current span's `traceparent`, so the receiver can join the trace.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match traceparent() {
        Some(value) => request.header("traceparent", value),
        None => request,
    }
}

/// The exporter's HTTP client: our reqwest, run on the server's runtime (the batch
/// exporter calls it from a thread of its own).
#[derive(Debug)]
struct Outgoing {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Outgoing {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            let mut answer = http::Response::new(body);
            *answer.status_mut() = status;
            Ok::<_, reqwest::Error>(answer)
        });
        match sent.await {
            Ok(result) => result.map_err(Into::into),
            Err(joined) => Err(joined.into()),
        }
    }
}
