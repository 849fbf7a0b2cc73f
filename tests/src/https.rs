//! A real HTTPS client for the tests, on rustls and hyper, with every knob the listener tests
//! turn: trusted CA, TLS versions and cipher suites, a client certificate, ALPN, SNI.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub struct ClientOpts<'a> {
    pub ca: &'a Path,
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// None: rustls' defaults.
    pub suites: Option<Vec<SupportedCipherSuite>>,
    pub client_cert: Option<(&'a Path, &'a Path)>,
    pub alpn: &'a [&'a [u8]],
}

impl<'a> ClientOpts<'a> {
    pub fn new(ca: &'a Path) -> Self {
        ClientOpts {
            ca,
            versions: rustls::ALL_VERSIONS,
            suites: None,
            client_cert: None,
            alpn: &[b"h2", b"http/1.1"],
        }
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suites) = &self.suites {
            provider.cipher_suites = suites.clone();
        }
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca)
            .expect("test CA file")
            .flatten()
        {
            roots.add(cert).expect("test CA is valid");
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(provider) as Arc<CryptoProvider>)
                .with_protocol_versions(self.versions)
                .expect("test TLS versions")
                .with_root_certificates(roots);
        let mut config = match self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .expect("client cert")
                        .flatten()
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).expect("client key"),
                )
                .expect("client cert and key match"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = Resumption::in_memory_sessions(64);
        Arc::new(config)
    }
}

/// What a TLS handshake settled.
#[derive(Debug, Clone)]
pub struct Session {
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    pub suite: Option<String>,
    pub peer_cert: Vec<u8>,
    pub resumed: bool,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub session: Session,
}

/// Connects and completes the TLS handshake, sending `sni` (an IP sends none).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    connect_from(None, addr, sni, config).await
}

/// As [`connect`], from the local address `source` (e.g. another 127.0.0.0/8 address).
pub async fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| format!("socket: {e}"))?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
            socket.connect(addr).await
        }
    }
    .map_err(|e| format!("connect {addr}: {e}"))?;
    let name =
        ServerName::try_from(sni.to_string()).map_err(|e| format!("server name {sni}: {e}"))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

pub fn session(tls: &TlsStream<TcpStream>) -> Session {
    let conn = tls.get_ref().1;
    Session {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite())),
        peer_cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}

/// One request on a new connection, over HTTP/2 if ALPN chose it, else HTTP/1.1.
pub async fn send(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    send_from(None, addr, sni, config, req).await
}

/// As [`send`], from the local address `source`.
pub async fn send_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    mut req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tls = connect_from(source, addr, sni, config).await?;
    let session = session(&tls);
    let io = TokioIo::new(tls);
    let resp = if session.alpn.as_deref() == Some(b"h2") {
        // HTTP/2 carries scheme and authority as pseudo-headers: the URI must be absolute,
        // its authority the Host asked for (RFC 9113 8.3.1: the two may not differ).
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let authority = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("edgelb.test")
            .to_string();
        *req.uri_mut() = format!("https://{authority}{path}")
            .parse()
            .map_err(|e| format!("uri: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        session,
    })
}

/// `GET path` with a Host header.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "edgelb.test")
        .body(Full::new(Bytes::new()))
        .expect("static request")
}

/// The certificate a server presents for `sni`, without verifying it (to see which one the
/// server chose when it is not one this client could verify).
pub async fn connect_unverified(addr: SocketAddr, sni: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(edgelb::tls::client::accept_any_certificate(provider))
        .with_no_client_auth();
    let tls = connect(addr, sni, Arc::new(config)).await?;
    Ok(session(&tls).peer_cert)
}

/// An HTTP/2 connection to edgelb.test at `addr`, driven by a task of the current runtime;
/// `window`: the client's stream and connection windows (fixed), else hyper's.
pub async fn h2_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    window: Option<u32>,
) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
    let tls = connect(addr, "edgelb.test", config).await?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(w) = window {
        builder
            .initial_stream_window_size(w)
            .initial_connection_window_size(w)
            .adaptive_window(false);
    }
    let (sender, conn) = builder
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `n` GET requests for `path` one after another on one HTTP/2 connection; the bodies.
pub async fn get_many(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    let mut sender = h2_connect(addr, config, None).await?;
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let req = Request::builder()
            .uri(format!("https://edgelb.test{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(bodies)
}

/// Reads from `tls` until `n` whole HTTP/1.1 responses have arrived, the connection ends, or
/// 10 s pass: their statuses (at most `n`) and everything read, as text.
pub async fn read_responses(tls: &mut TlsStream<TcpStream>, n: usize) -> (Vec<u16>, String) {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (statuses, _, _) = crate::raw::split_at_most(&all, n);
        if statuses.len() == n {
            return (statuses, String::from_utf8_lossy(&all).into_owned());
        }
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => all.extend_from_slice(&buf[..k]),
            _ => return (statuses, String::from_utf8_lossy(&all).into_owned()),
        }
    }
}
