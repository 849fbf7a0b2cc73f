//! The PROXY protocol (HAProxy's, versions 1 and 2): how a TCP hop tells the next one who the
//! client is. edgelb reads it from a balancer in front (`--accept-proxy-protocol`), so that the
//! client's address, not the balancer's, is the one logged, ruled on and forwarded; and writes
//! it to backends (`--backend-proxy-protocol`) that sit behind a TCP-level hop of their own.
//!
//! The specification: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.
//! This module knows bytes and sockets only; the listener and the proxy decide when to use it.
pub mod encode;
pub mod parse;
pub mod read;

use std::net::SocketAddr;

pub use parse::{ParseError, Parsed, parse};
pub use read::{ReadError, read_header};

/// A version of the protocol: v1 is a text line, v2 a binary block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// As the flags spell it.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a header says about the connection it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The client and the address it connected to; None when the sender had none to give
    /// (v2 `LOCAL`, a health check of the balancer itself; v1 `UNKNOWN`; v2 `AF_UNSPEC`):
    /// the connection's own addresses stand.
    pub addresses: Option<Addresses>,
}

/// The two ends of the client's connection to the first hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}
