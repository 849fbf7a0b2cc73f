//! HTTP/3 in a build without the `http3` feature (the fuzz targets'): the same functions,
//! which refuse to start it, so that the rest of the daemon does not depend on the feature.
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use tokio::sync::watch;

use super::ListenerContext;

/// Stands for quinn's server configuration, which this build lacks.
pub struct QuicConfig;

const WHY: &str = "this edgelb is built without HTTP/3 (the http3 feature)";

pub fn bind(_addr: SocketAddr, _count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, WHY))
}

pub fn server_config(_tls: rustls::ServerConfig) -> Result<Arc<QuicConfig>, rustls::Error> {
    Err(rustls::Error::General(WHY.into()))
}

pub fn alt_svc(_port: u16) -> HeaderValue {
    HeaderValue::from_static("clear")
}

pub async fn serve_endpoint(
    _socket: std::net::UdpSocket,
    _ctx: Arc<ListenerContext>,
    _stop: watch::Receiver<bool>,
) {
}
