//! Taking a header off a new connection, before anything else reads it (TLS, HTTP): bytes are
//! peeked until a header is whole, then exactly its bytes are read, so that what follows
//! stays in the socket for the next reader.
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::parse::{ParseError, V1_MAX, V2_FIXED, parse};
use super::{Header, Version};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Parse(ParseError),
    #[error("no whole PROXY protocol header within the handshake timeout")]
    Timeout,
    #[error("the connection closed before a whole PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

impl ReadError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Parse(e) => e.reason(),
            ReadError::Timeout => "timeout",
            ReadError::Closed => "closed",
            ReadError::Io(_) => "io",
        }
    }
}

/// Reads the header `expected` from the start of `stream`, by `deadline`.
pub async fn read_header(
    stream: &mut TcpStream,
    expected: Version,
    deadline: Instant,
) -> Result<Header, ReadError> {
    let mut buf = vec![
        0u8;
        match expected {
            Version::V1 => V1_MAX,
            Version::V2 => V2_FIXED,
        }
    ];
    // Set once the peer has shut its side: what is in the socket then is all there will be.
    let mut closed = false;
    let parsed = loop {
        let asked = buf.len();
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(0)) => return Err(ReadError::Closed),
            Ok(Ok(n)) => n,
        };
        match parse(expected, &buf[..n]) {
            Ok(parsed) => break parsed,
            Err(ParseError::Incomplete(needed)) => {
                // v2 says its length once its fixed part is in; `parse` bounds it.
                if needed > buf.len() {
                    buf.resize(needed, 0);
                }
                // A full buffer may have left bytes in the socket (v2's fixed part is peeked
                // first): peek again at once. Fewer bytes than asked were all there was.
                if n < asked {
                    if closed {
                        return Err(ReadError::Closed);
                    }
                    closed = next_segment(stream, deadline).await?;
                }
            }
            Err(e) => return Err(ReadError::Parse(e)),
        }
    };
    // The bytes are already in the socket's buffer: this read does not wait.
    stream
        .read_exact(&mut buf[..parsed.consumed])
        .await
        .map_err(ReadError::Io)?;
    Ok(parsed.header)
}

/// Waits until more bytes reach `stream` after a peek that found part of a header, without
/// polling: the readiness the peeked bytes gave is dropped first, so the wait ends at the next
/// segment (or the peer's FIN), not at once. Returns whether the peer has shut its side.
async fn next_segment(stream: &TcpStream, deadline: Instant) -> Result<bool, ReadError> {
    // A bytes-arrived event the reactor has not taken yet is kept: readiness is only dropped
    // if nothing new came since it was set, so a segment between the peek and here is not lost.
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
    match tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE)).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(ready)) => Ok(ready.is_read_closed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = l.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_and_what_follows_is_left() {
        let (mut client, mut server) = pair().await;
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\nhello";
        let writer = tokio::spawn(async move {
            for piece in [&line[..3], &line[3..20], &line[20..]] {
                client.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let header = read_header(&mut server, Version::V1, deadline)
            .await
            .expect("header");
        assert_eq!(
            header.addresses.map(|a| a.source),
            Some("192.0.2.7:40000".parse().expect("addr"))
        );
        let _client = writer.await.expect("writer");
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"hello");
    }

    /// Sends `line` to a server socket in two parts, the second `after` the first, then the
    /// client's FIN when `fin`; returns the server side and a deadline 5 s away.
    async fn in_two_parts(
        line: &'static [u8],
        split: usize,
        after: Duration,
        fin: bool,
    ) -> (TcpStream, Instant) {
        let (mut client, server) = pair().await;
        client.write_all(&line[..split]).await.expect("first part");
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            client.write_all(&line[split..]).await.expect("rest");
            if fin {
                client.shutdown().await.expect("FIN");
            }
            // Held open until the reader is done with it.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        (server, Instant::now() + Duration::from_secs(5))
    }

    #[tokio::test]
    async fn the_rest_of_a_header_with_the_peers_fin_is_a_whole_header() {
        let line = b"PROXY TCP6 fd00::7 fd00::1 40000 443\r\n";
        let (mut server, deadline) = in_two_parts(line, 10, Duration::from_millis(50), true).await;
        let header = read_header(&mut server, Version::V1, deadline)
            .await
            .expect("whole header");
        assert_eq!(
            header.addresses.map(|a| a.source),
            Some("[fd00::7]:40000".parse().expect("addr"))
        );
    }

    /// CPU time of this thread, which runs the test's runtime and so the reader.
    fn thread_cpu() -> Duration {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(Duration::from)
            .expect("thread CPU clock")
    }

    #[tokio::test]
    async fn waiting_for_the_rest_of_a_header_does_not_spin() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n";
        let (mut server, deadline) =
            in_two_parts(line, 12, Duration::from_millis(300), false).await;
        let cpu = thread_cpu();
        read_header(&mut server, Version::V1, deadline)
            .await
            .expect("whole header");
        let used = thread_cpu().saturating_sub(cpu);
        // Peeking in a loop while the rest is on its way would use most of the 300 ms.
        assert!(used < Duration::from_millis(100), "{used:?} of CPU");
    }

    #[tokio::test]
    async fn a_v2_header_already_whole_in_the_socket_is_read_at_once() {
        let (mut client, mut server) = pair().await;
        // The daemon's own encoder writes the header; what the client sends next follows it.
        let mut bytes = super::super::encode::v2(
            "192.0.2.7:40000".parse().expect("source"),
            "10.0.0.1:443".parse().expect("destination"),
            None,
            None,
        );
        bytes.extend_from_slice(b"hello");
        client.write_all(&bytes).await.expect("write");
        // Everything is in the socket before the read starts: no later segment will wake it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        let header = read_header(&mut server, Version::V2, deadline)
            .await
            .expect("whole header");
        assert_eq!(
            header.addresses.map(|a| a.source),
            Some("192.0.2.7:40000".parse().expect("addr"))
        );
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"hello");
    }

    #[tokio::test]
    async fn silence_times_out_and_a_tls_hello_is_no_header() {
        let (_client, mut server) = pair().await;
        let deadline = Instant::now() + Duration::from_millis(100);
        let e = read_header(&mut server, Version::V2, deadline)
            .await
            .expect_err("nothing sent");
        assert_eq!(e.reason(), "timeout");

        let (mut client, mut server) = pair().await;
        client
            .write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
            .await
            .expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = read_header(&mut server, Version::V2, deadline)
            .await
            .expect_err("not a header");
        assert_eq!(e.reason(), "missing");

        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4").await.expect("write");
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let e = read_header(&mut server, Version::V1, deadline)
            .await
            .expect_err("cut short");
        assert_eq!(e.reason(), "closed");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
