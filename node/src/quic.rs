//! QUIC plumbing shared by edges and the hub: TLS 1.3 identities and trust,
//! endpoint configs, and frame IO on streams (the frame format itself lives
//! in `meridian_protocol::codec::federation`).
//!
//! Trust model: in dev mode the hub creates its own CA and a certificate
//! signed by it on first start and keeps them in its data directory. Edges
//! trust the hub through that CA file (`--hub-ca`) or by pinning the hub
//! certificate's SHA-256 fingerprint (`--hub-fingerprint`). Skipping
//! verification exists only as [`HubTrust::DangerousSkipVerify`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_protocol::codec::federation::{self, FRAME_HEADER_LEN, FrameError, FrameKind};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::task::AbortOnDrop;

/// ALPN of edge ↔ hub federation.
pub const FEDERATION_ALPN: &[u8] = b"meridian-fed/1";
/// ALPN of device ↔ edge sync.
pub const DEVICE_ALPN: &[u8] = b"meridian/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("fingerprint must be 64 hex characters (SHA-256 of the hub certificate), got `{0}`")]
    BadFingerprint(String),
}

/// The hub's certificate chain and key, plus what edges need to trust it.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Path of the CA certificate edges can trust.
    pub ca_path: PathBuf,
    /// SHA-256 of the leaf certificate, hex.
    pub fingerprint: String,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

/// Who presents a certificate, and who must trust it (for the log line
/// when a development identity is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityOf {
    Hub,
    Edge,
}

impl IdentityOf {
    fn common_name(self) -> &'static str {
        match self {
            IdentityOf::Hub => "meridian-hub",
            IdentityOf::Edge => "meridian-edge",
        }
    }

    fn trusted_by(self) -> &'static str {
        match self {
            IdentityOf::Hub => "the hub's certificate; edges must trust",
            IdentityOf::Edge => "this edge's certificate; devices (quic://) and other edges must trust",
        }
    }
}

/// Loads the identity in `dir`, creating a dev CA and a certificate for
/// `names` (DNS names or IPs) on first use. (The files keep the names
/// `hub-cert.pem`, `hub-key.pem` on edges too.)
pub fn load_or_create_identity(dir: &Path, names: &[String], of: IdentityOf) -> Result<Identity, TlsError> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|source| TlsError::Io { path: tls.clone(), source })?;
    let (ca_path, cert_path, key_path) = (tls.join("ca.pem"), tls.join("hub-cert.pem"), tls.join("hub-key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        create_dev_identity(&ca_path, &cert_path, &key_path, names, of.common_name())?;
        tracing::warn!(dir = %tls.display(), "created a development CA and {} {}", of.trusted_by(), ca_path.display());
    }
    let cert_chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|_| TlsError::Pem { path: cert_path.clone(), what: "certificate" })?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::Pem { path: key_path.clone(), what: "key" })?;
    let leaf = cert_chain.first().ok_or(TlsError::Pem { path: cert_path.clone(), what: "certificate" })?;
    let fingerprint = fingerprint(leaf);
    Ok(Identity { cert_chain, key, ca_path, fingerprint })
}

fn create_dev_identity(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
    common_name: &str,
) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Meridian development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(DnType::CommonName, common_name);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    write(ca_path, &ca_cert.pem())?;
    write(cert_path, &format!("{}{}", leaf.pem(), ca_cert.pem()))?;
    write(key_path, &leaf_key.serialize_pem())
}

/// QUIC server config with the given identity and ALPN.
pub fn server_config(identity: &Identity, alpn: &[u8]) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// A QUIC server on a UDP socket bound earlier
/// ([`crate::startup::bind_udp`]: ports first, then files).
pub fn server_endpoint(config: quinn::ServerConfig, socket: std::net::UdpSocket) -> std::io::Result<quinn::Endpoint> {
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)
}

/// How long an edge's link to its hub may stay silent before the edge
/// counts the hub dead and fails over (keep-alives every
/// [`UPLINK_KEEP_ALIVE`] keep a live link from ever being silent that long).
pub const UPLINK_IDLE: std::time::Duration = std::time::Duration::from_secs(4);
pub const UPLINK_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(800);

/// Keep-alives so idle links stay up and dead ones are noticed (10 s of
/// silence; an edge's uplink asks for [`UPLINK_IDLE`], and the smaller of
/// the two sides' timeouts applies).
fn transport() -> quinn::TransportConfig {
    transport_with(std::time::Duration::from_secs(2), std::time::Duration::from_secs(10))
}

fn transport_with(keep_alive: std::time::Duration, idle: std::time::Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Why a client endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Binding the local UDP socket failed.
    #[error(transparent)]
    Bind(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A client endpoint on an ephemeral local port of `remote`'s address
/// family, trusting servers as `trust` says, for ALPN `alpn`. Edges dial
/// the hub and other edges with it, device clients their edge.
pub fn client_endpoint(remote: SocketAddr, trust: &HubTrust, alpn: &[u8]) -> Result<quinn::Endpoint, EndpointError> {
    let bind = if remote.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(EndpointError::Bind)?;
    endpoint.set_default_client_config(client_config(trust, alpn)?);
    Ok(endpoint)
}

/// How an edge decides to trust the hub's certificate.
#[derive(Clone, Debug)]
pub enum HubTrust {
    /// Trust certificates signed by this CA (PEM file).
    CaFile(PathBuf),
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex).
    Fingerprint(String),
    /// Accept any certificate. Only for experiments: anyone on the path can
    /// impersonate the hub.
    DangerousSkipVerify,
}

/// QUIC client config for the given trust and ALPN.
pub fn client_config(trust: &HubTrust, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        HubTrust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|_| TlsError::Pem { path: path.clone(), what: "CA certificate" })?;
            for c in certs {
                roots.add(c)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        HubTrust::Fingerprint(fp) => {
            let fp = fp.to_ascii_lowercase();
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TlsError::BadFingerprint(fp));
            }
            let verifier = PinnedVerifier { fingerprint: Some(fp), algs: provider().signature_verification_algorithms };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        HubTrust::DangerousSkipVerify => {
            let verifier = PinnedVerifier { fingerprint: None, algs: provider().signature_verification_algorithms };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    // A hub that died is noticed sooner, so its edges fail over sooner.
    let transport = if alpn == FEDERATION_ALPN { transport_with(UPLINK_KEEP_ALIVE, UPLINK_IDLE) } else { transport() };
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts the one certificate with the pinned fingerprint (or, with
/// `None`, anything); handshake signatures are still verified.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.fingerprint {
            Some(expected) if *expected != fingerprint(end_entity) => Err(rustls::Error::General(format!(
                "hub certificate fingerprint {} does not match the pinned {expected}",
                fingerprint(end_entity)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Errors reading or writing frames on a QUIC stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<(FrameKind, Vec<u8>)>, FrameIoError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (kind, len) = federation::parse_header(header, limit)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Compares secrets in constant time (hashed first, so lengths do not leak
/// either). The hub's edge secrets, the edges' peer secret and the admin
/// token all go through it.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter().zip(hb.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts QUIC connections until the endpoint closes, running `serve` on
/// each in a task this loop owns (aborted with it). The hub's edge
/// listener, the edge's device listener and its peer listener all use it.
pub async fn accept_each<F, Fut>(endpoint: quinn::Endpoint, mut serve: F)
where
    F: FnMut(quinn::Incoming) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tasks.spawn(serve(incoming));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Tells a peer why it was refused (a `refused` control frame), gives that
/// a moment to leave, and closes the connection.
pub async fn refuse(connection: &quinn::Connection, mut send: quinn::SendStream, reason: &str) {
    let refused = federation::encode_control(&federation::Control::Refused { reason: reason.to_owned() });
    let _ = write_frame(&mut send, FrameKind::Control, &refused).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    connection.close(quinn::VarInt::from_u32(2), reason.as_bytes());
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, kind: FrameKind, payload: &[u8]) -> Result<(), FrameIoError> {
    send.write_all(&federation::encode_frame(kind, payload)).await?;
    Ok(())
}

/// Moves frames between one QUIC stream pair and the node runtime until
/// either side ends; returns why it ended. The stream is read by a task
/// owned here (reads are not cancel-safe, so they must not race in a
/// `select!`). `on_rtt` gets the connection's RTT every second;
/// `on_control` every control frame after the handshake.
#[allow(clippy::too_many_arguments)] // one place wires a link; a struct would only rename them
pub async fn pump(
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: meridian_protocol::ids::ConnId,
    events: &crate::runtime::NodeEvents,
    mut out: crate::runtime::OutboundQueue,
    reading: Reading,
    on_rtt: impl Fn(std::time::Duration),
    mut on_control: impl FnMut(Vec<u8>),
) -> String {
    use crate::runtime::{NodeEvent, Outbound};
    let span = crate::telemetry::connection_span("quic", conn.0, Some(connection.remote_address()));
    let link = reading.link;
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(64);
    let reader = AbortOnDrop(tokio::spawn(read_frames(recv, reading, frames_tx)));
    let mut rtt = tokio::time::interval(std::time::Duration::from_secs(1));
    // The trace context sent in front of the next document message.
    let mut parent = None;
    let reason = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok((FrameKind::Repo, bytes))) => {
                    if events.send(NodeEvent::Frame { conn, bytes, parent: parent.take() }).await.is_err() {
                        break "node stopped".to_owned();
                    }
                }
                Some(Ok((FrameKind::Control, bytes))) => match federation::decode_control(&bytes) {
                    Ok(federation::Control::Trace { traceparent }) => parent = link.then_some(traceparent),
                    _ => on_control(bytes),
                },
                Some(Err(e)) => break e.to_string(),
                None => break "stream finished".to_owned(),
            },
            o = out.recv() => match o {
                Some(Outbound::Frame(bytes)) => {
                    if let Err(e) = write_frame(&mut send, FrameKind::Repo, &bytes).await {
                        break e.to_string();
                    }
                }
                Some(Outbound::Traced(t)) => {
                    let (trace, frame) = (t.trace, t.frame);
                    // One write: the context and its message stay together.
                    let mut both = federation::encode_frame(FrameKind::Control, &trace);
                    both.extend_from_slice(&federation::encode_frame(FrameKind::Repo, &frame));
                    if let Err(e) = send.write_all(&both).await {
                        break FrameIoError::from(e).to_string();
                    }
                }
                Some(Outbound::Control(bytes)) => {
                    if let Err(e) = write_frame(&mut send, FrameKind::Control, &bytes).await {
                        break e.to_string();
                    }
                }
                Some(Outbound::Close(reason)) => {
                    connection.close(quinn::VarInt::from_u32(1), reason.as_bytes());
                    break reason;
                }
                None => {
                    connection.close(quinn::VarInt::from_u32(0), b"closing");
                    break "closed by node".to_owned();
                }
            },
            _ = rtt.tick() => on_rtt(connection.rtt()),
        }
    };
    drop(reader);
    let _ = events.send(NodeEvent::Disconnected { conn }).await;
    span.record("reason", reason.as_str());
    reason
}

/// How a pumped stream is read.
pub struct Reading {
    /// Frames larger than this end the stream.
    pub max_frame_bytes: usize,
    /// A client's rates (devices); `None` for links between nodes.
    pub rates: Option<crate::throttle::Rates>,
    /// Called each time the rates pause reading (for metrics).
    pub on_throttled: Option<Box<dyn Fn() + Send>>,
    /// A link between nodes: a `trace` control frame's context is taken
    /// for the next message (from a device it is ignored: a client does not
    /// choose our traces).
    pub link: bool,
}

impl Reading {
    /// A link between nodes: only the frame size is limited.
    pub fn unthrottled(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes, rates: None, on_throttled: None, link: true }
    }
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading").field("max_frame_bytes", &self.max_frame_bytes).field("rates", &self.rates).finish()
    }
}

async fn read_frames(
    mut recv: quinn::RecvStream,
    reading: Reading,
    tx: tokio::sync::mpsc::Sender<Result<(FrameKind, Vec<u8>), FrameIoError>>,
) {
    let limit = reading.max_frame_bytes;
    let mut throttle = reading.rates.and_then(crate::throttle::Throttle::new);
    loop {
        // Control frames after the handshake (the hub's `home` notices) go
        // to the pump's `on_control`.
        let item = match read_frame(&mut recv, limit).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let stop = item.is_err();
        let wait = match (&item, throttle.as_mut()) {
            (Ok((_, bytes)), Some(t)) => t.take(bytes.len()),
            _ => None,
        };
        if tx.send(item).await.is_err() || stop {
            return;
        }
        // Past its rate, the stream is not read for a while (QUIC flow
        // control holds the peer back).
        if let Some(wait) = wait {
            if let Some(on_throttled) = &reading.on_throttled {
                on_throttled();
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"k", b"K"));
    }
}
