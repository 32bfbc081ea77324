//! Logs and traces of a node process: log lines on stderr (`RUST_LOG`), and
//! OpenTelemetry traces exported over OTLP (HTTP/protobuf) when an endpoint
//! is given (`--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`), off
//! otherwise. The spans themselves are made by the node runtime
//! (`runtime/traces.rs`) and the transports, only while [`tracing_on`].
//!
//! The exporter's standard settings apply (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the spans exported as traces (connections, document
/// messages, storage writes, federation hops).
pub const TARGET: &str = "meridian::trace";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (the runtime makes none otherwise).
pub fn tracing_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A connection's span (from now until it is dropped), or none when
/// traces are not exported.
pub fn connection_span(transport: &'static str, conn: u64, remote: Option<std::net::SocketAddr>) -> tracing::Span {
    if !tracing_on() {
        return tracing::Span::none();
    }
    let remote = remote.map(|r| r.to_string()).unwrap_or_default();
    tracing::info_span!(target: TARGET, "connection", otel.kind = "server", transport, conn, remote,
        reason = tracing::field::Empty)
}

/// Who this process is, in its traces.
#[derive(Clone, Debug)]
pub struct Service {
    /// `service.name`: `meridian-edge` or `meridian-hub`.
    pub name: &'static str,
    /// `service.instance.id`: the edge's or the hub's id.
    pub instance: String,
}

/// Keeps the exporter running; dropping it sends what is still queued.
#[must_use = "dropping it stops the export of traces"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.provider.is_some()).finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            ON.store(false, Ordering::Relaxed);
            if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("traces: the last spans could not be sent: {error}");
            }
        }
    }
}

/// Logs to stderr (`RUST_LOG`, else `default_filter`); with `otlp` (the
/// collector's base URL, e.g. `http://127.0.0.1:4318`), traces too.
pub fn init(default_filter: &str, otlp: Option<&str>, service: &Service) -> anyhow::Result<Telemetry> {
    use std::io::IsTerminal as _;
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours on a terminal only: not in files, journald or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()));
    let Some(endpoint) = otlp.map(str::trim).filter(|e| !e.is_empty()) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(endpoint, service)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.name))
        // The spans' own fields say what they are about; no source
        // locations, thread names or busy/idle times on every span.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO));
    tracing_subscriber::registry().with(logs).with(traces).init();
    ON.store(true, Ordering::Relaxed);
    tracing::info!(endpoint, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

fn provider(endpoint: &str, service: &Service) -> anyhow::Result<SdkTracerProvider> {
    // The base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT; the traces' own
    // variable, when set, is the whole URL.
    let url = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .with_http_client(Ureq::new())
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.name)
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", service.instance.clone()))
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The exporter's HTTP client: ureq, blocking, on the batch processor's
/// own thread (the SDK runs exports there).
#[derive(Debug)]
struct Ureq {
    agent: ureq::Agent,
}

impl Ureq {
    fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build();
        Self { agent: config.into() }
    }
}

#[async_trait::async_trait]
impl HttpClient for Ureq {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, body.to_vec());
        let mut response = self.agent.run(request)?;
        let status = response.status();
        let body = response.body_mut().with_config().limit(4 << 20).read_to_vec()?;
        Ok(Response::builder().status(status).body(Bytes::from(body))?)
    }
}
