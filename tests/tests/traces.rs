//! OpenTelemetry traces: real processes (a hub and two edges) export spans
//! over OTLP/HTTP to a receiver here that decodes the protobuf. One change
//! written by a client at edge `eu` and read by a client at edge `us` is
//! one trace: eu receives it, stores it and sends it to the hub (with its
//! W3C trace context in a `trace` frame), the hub receives it as a child of
//! eu's send, stores it and sends it to us, which receives and stores it.
//! The trace's span tree is printed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use meridian_edge::client::Client;
use meridian_protocol::automerge::transaction::Transactable;
use meridian_protocol::automerge::{ROOT, ReadDoc};
use meridian_tests::clients::{fast, find_eventually};
use meridian_tests::otlp::{OtlpReceiver, ReceivedSpan, tree};
use meridian_tests::process::{EdgeProcess, HubProcess, free_port};

fn edge_args<'a>(id: &'a str, secret: &'a str, hub: &'a str, ca: &'a str, otlp: &'a str) -> Vec<&'a str> {
    vec!["--hub", hub, "--edge-id", id, "--hub-secret", secret, "--hub-ca", ca, "--otlp-endpoint", otlp]
}

/// The one span of `instance` named `name` in `spans` (a trace's).
fn one<'a>(
    spans: &'a [ReceivedSpan],
    instance: &str,
    name: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.instance == instance && s.name == name && pred(s))
        .with_context(|| format!("no {instance}/{name} span in the trace"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_across_three_nodes_is_one_trace() -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let otlp = receiver.url.clone();
    let dir = tempfile::tempdir()?;
    let (quic, http) = (free_port()?, free_port()?);
    let mut hub = HubProcess::start(
        &dir.path().join("hub"),
        quic,
        http,
        &["--edge", "eu=eu-secret", "--edge", "us=us-secret", "--hub-id", "hub", "--otlp-endpoint", &otlp],
    )?;
    let ca = hub.ca_path().to_string_lossy().into_owned();
    let hub_addr = format!("127.0.0.1:{quic}");
    let mut eu =
        EdgeProcess::start(&dir.path().join("eu"), free_port()?, &edge_args("eu", "eu-secret", &hub_addr, &ca, &otlp))?;
    let mut us =
        EdgeProcess::start(&dir.path().join("us"), free_port()?, &edge_args("us", "us-secret", &hub_addr, &ca, &otlp))?;

    let writer = Client::connect(&eu.ws_url(), fast()).await?;
    let doc = writer.create(|tx| tx.put(ROOT, "title", "traced").map(|_| ())).await?;
    writer.wait_acked(doc).await?;
    let reader = Client::connect(&us.ws_url(), fast()).await?;
    find_eventually(&reader, doc).await?;
    // The change followed: written at eu, read at us.
    writer.change(doc, |tx| tx.put(ROOT, "step", 2).map(|_| ())).await?;
    let seen = tokio::time::timeout(
        Duration::from_secs(20),
        reader.wait_for(doc, |d| d.get(ROOT, "step").ok().flatten().is_some()),
    )
    .await;
    ensure!(matches!(seen, Ok(Ok(()))), "the change did not reach us");
    writer.close().await;
    reader.close().await;
    // A clean stop sends what each node still has queued.
    for status in [us.terminate()?, eu.terminate()?, hub.terminate()?] {
        ensure!(status.success(), "a node did not stop cleanly: {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = receiver.spans();
        let have = |i: &str| spans.iter().any(|s| s.instance == i);
        if (have("eu") && have("us") && have("hub")) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(receiver.requests() > 0, "nothing was exported");
    for s in &spans {
        ensure!(s.service == "meridian-edge" || s.service == "meridian-hub", "a span from {:?}", s.service);
    }
    ensure!(spans.iter().any(|s| s.name == "connection"), "connections have spans");

    // The trace that starts with eu receiving the change from its client.
    let doc_s = doc.to_string();
    let of_doc = |s: &ReceivedSpan| s.attr("doc") == Some(doc_s.as_str());
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.instance == "eu" && s.name == "receive" && s.parent.is_empty() && of_doc(s))
        .filter(|s| s.attr("changes").is_some_and(|c| c != "0"))
        .collect();
    ensure!(
        !roots.is_empty(),
        "eu received changes from its client: {:#?}",
        spans.iter().filter(|s| of_doc(s)).collect::<Vec<_>>()
    );
    // Each change (the creation, then the step) starts its own trace; the
    // last one is the step.
    let root = roots.iter().max_by_key(|s| s.start_ns).copied().context("a root")?;
    let trace: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
    println!("{}", tree(&spans, &root.trace_id));
    if std::env::var_os("MERIDIAN_TRACES_DUMP").is_some() {
        for s in spans.iter().filter(|s| of_doc(s)) {
            println!("{} {} {} <- {} {:?}", s.trace_id, s.label(), s.span_id, s.parent, s.attributes);
        }
    }

    // eu: received from the client, stored, sent to the hub (context
    // carried), which received it as the child of that send.
    let eu_store = one(&trace, "eu", "store.write", |_| true)?;
    ensure!(eu_store.parent == root.span_id, "eu's write belongs to the client's message");
    let eu_send = one(&trace, "eu", "send", |s| s.attr("link") == Some("true"))?;
    ensure!(eu_send.parent == root.span_id, "eu's send to the hub belongs to the client's message");
    let hub_recv =
        one(&trace, "hub", "receive", |s| s.parent == eu_send.span_id && s.attr("changes").is_some_and(|c| c != "0"))?;
    let hub_store = one(&trace, "hub", "store.write", |_| true)?;
    ensure!(hub_store.parent == hub_recv.span_id, "the hub's write belongs to what eu sent");
    // The hub sent it on to us; us received it as the child of that send and stored it.
    let hub_sends: Vec<&str> = trace
        .iter()
        .filter(|s| s.instance == "hub" && s.name == "send" && s.parent == hub_recv.span_id)
        .filter(|s| s.attr("link") == Some("true"))
        .map(|s| s.span_id.as_str())
        .collect();
    let us_recv = one(&trace, "us", "receive", |s| hub_sends.contains(&s.parent.as_str()))?;
    ensure!(us_recv.attr("changes").is_some_and(|c| c != "0"), "us received the change itself");
    let us_store = one(&trace, "us", "store.write", |_| true)?;
    ensure!(us_store.parent == us_recv.span_id, "us's write belongs to what the hub sent");
    // Spans are real intervals in order along the way.
    ensure!(eu_send.start_ns >= root.start_ns && hub_recv.start_ns >= eu_send.start_ns - 50_000_000);
    ensure!(us_store.end_ns >= us_store.start_ns && hub_store.end_ns > hub_store.start_ns);
    Ok(())
}
