//! A real HTTP/1.1 backend for tests: answers every request with its own name and counts what
//! it served, so tests can see which backend a request reached.
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    served: Arc<AtomicUsize>,
}

impl Backend {
    /// Starts a backend on `bind` inside the namespace at `ns_path` (None: this namespace).
    pub fn start(name: &str, bind: &str, ns_path: Option<&str>) -> Self {
        let bind = bind.to_string();
        let listener = match ns_path {
            Some(p) => crate::netns::in_netns(p, move || TcpListener::bind(bind)),
            None => TcpListener::bind(bind),
        }
        .unwrap_or_else(|e| panic!("backend {name}: bind: {e}"));
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let (n, s) = (name.to_string(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (n, s) = (n.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &n, &s));
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            served,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, name: &str, served: &AtomicUsize) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    loop {
        let mut line = String::new();
        let mut content_length = 0usize;
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if !first
                && let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
            first = false;
        }
        let mut body = vec![0u8; content_length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::SeqCst);
        let reply = format!("backend {name}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(reply.as_bytes()).is_err()
        {
            return;
        }
    }
}
