//! An OTLP/HTTP trace receiver for tests: it decodes what nodes export
//! (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`) into spans, and
//! prints a trace as a tree.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as received, with the node that sent it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` and `service.instance.id` of the sender.
    pub service: String,
    pub instance: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// `instance/name` (e.g. `eu/receive`).
    pub fn label(&self) -> String {
        format!("{}/{}", self.instance, self.name)
    }
}

/// A receiver on a loopback port; it keeps every span it was sent.
#[derive(Debug)]
pub struct OtlpReceiver {
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<usize>>,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (s, r) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    *r.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    s.lock().unwrap_or_else(|e| e.into_inner()).extend(flatten(request));
                    // An empty ExportTraceServiceResponse: nothing rejected.
                    (axum::http::StatusCode::OK, Vec::new())
                }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, spans, requests, _server: server })
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Export requests decoded so far.
    pub fn requests(&self) -> usize {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        let instance = resource.get("service.instance.id").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    instance: instance.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(value).unwrap_or_default())).collect()
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The spans of one trace as an indented tree (children by start time),
/// each with its node, duration and chosen attributes.
pub fn tree(spans: &[ReceivedSpan], trace_id: &str) -> String {
    let spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let mut children: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in &spans {
        let parent = if spans.iter().any(|p| p.span_id == s.parent) { s.parent.as_str() } else { "" };
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_ns);
    }
    let mut out = format!("trace {trace_id}\n");
    fn walk(out: &mut String, children: &BTreeMap<&str, Vec<&ReceivedSpan>>, parent: &str, depth: usize, t0: u64) {
        for s in children.get(parent).into_iter().flatten() {
            let shown: Vec<String> = ["type", "bytes", "changes", "kind", "link", "peer"]
                .iter()
                .filter_map(|k| s.attr(k).filter(|v| !v.is_empty()).map(|v| format!("{k}={v}")))
                .collect();
            out.push_str(&format!(
                "{:indent$}{:<28} +{:>8.3} ms  {:>7.3} ms  {}\n",
                "",
                s.label(),
                (s.start_ns.saturating_sub(t0)) as f64 / 1e6,
                (s.end_ns.saturating_sub(s.start_ns)) as f64 / 1e6,
                shown.join(" "),
                indent = depth * 2
            ));
            walk(out, children, &s.span_id, depth + 1, t0);
        }
    }
    walk(&mut out, &children, "", 0, t0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(instance: &str, name: &str, id: &str, parent: &str, start_ns: u64) -> ReceivedSpan {
        ReceivedSpan {
            service: "meridian-edge".into(),
            instance: instance.into(),
            trace_id: "t".into(),
            span_id: id.into(),
            parent: parent.into(),
            name: name.into(),
            attributes: BTreeMap::new(),
            start_ns,
            end_ns: start_ns + 1_000_000,
        }
    }

    #[test]
    fn a_trace_prints_as_a_tree_in_start_order() {
        let spans = vec![
            span("hub", "receive", "c", "b", 3_000_000),
            span("eu", "receive", "a", "", 1_000_000),
            span("eu", "send", "b", "a", 2_000_000),
            span("eu", "store.write", "d", "a", 1_500_000),
        ];
        let lines: Vec<String> =
            tree(&spans, "t").lines().map(|l| l.split("  +").next().unwrap_or("").trim_end().to_owned()).collect();
        assert_eq!(lines, ["trace t", "eu/receive", "  eu/store.write", "  eu/send", "    hub/receive"]);
    }
}
