//! samod (crates.io), an independent Rust implementation of automerge-repo,
//! as a sync server for the benchmarks: the second reference beside the JS
//! sync server (`tests/js/server.mjs`), set up the same way — documents kept
//! with samod's filesystem storage (the nodefs layout), and a share policy
//! that only syncs documents a peer asks for by id, never announces.
//!
//! samod's own WebSocket features pull axum's default features or
//! native-tls; this binary adapts the workspace's tokio-tungstenite socket
//! to samod's `Transport` instead (one binary frame per protocol message).
//!
//! Usage: `samod-server --port P --dir D` (`--port 0` picks a free one).
//! Prints `{"listening":P}` once it accepts connections; on SIGTERM or
//! SIGINT stops the repo (which finishes its storage writes) and exits 0.

use std::future::ready;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use samod::storage::TokioFilesystemStorage;
use samod::{PeerId, Repo, ShareConfig, Transport, Url};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Args {
    port: u16,
    dir: std::path::PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut port = None;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => port = Some(value()?.parse().context("--port must be a port number")?),
            "--dir" => dir = Some(value()?.into()),
            "-h" | "--help" => {
                println!("usage: samod-server --port P --dir D   (benchmark reference server; --port 0 picks one)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (usage: samod-server --port P --dir D)"),
        }
    }
    Ok(Args { port: port.context("--port is required")?, dir: dir.context("--dir is required")? })
}

/// samod's transport over an accepted tokio-tungstenite socket.
fn transport(ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Transport {
    let (sink, stream) = ws.split();
    let sink = sink.with(|bytes: Vec<u8>| ready(Ok::<_, WsError>(Message::Binary(bytes.into()))));
    // Pings are answered by tungstenite; a close frame ends the stream.
    let stream = stream.filter_map(|msg| {
        ready(match msg {
            Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    });
    Transport::new(stream, sink)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await.context("binding --port")?;
    let port = listener.local_addr()?.port();
    let repo = Repo::build_tokio()
        .with_peer_id(PeerId::from("samod-sync-server"))
        .with_storage(TokioFilesystemStorage::new(&args.dir))
        .with_share_policy(ShareConfig::read_write().with_announce(false))
        .load()
        .await;
    let url = Url::parse(&format!("ws://127.0.0.1:{port}/"))?;
    let acceptor = repo.make_acceptor(url).map_err(|_| anyhow::anyhow!("the samod repo stopped"))?;
    println!("{{\"listening\":{port}}}");

    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .max_message_size(Some(1 << 30))
                        .max_frame_size(Some(1 << 30));
                    if let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await {
                        let _ = acceptor.accept(transport(ws));
                    }
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    repo.stop().await;
    println!("{{\"shutdown\":true}}");
    Ok(())
}
