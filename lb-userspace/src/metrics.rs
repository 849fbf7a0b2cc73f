//! Prometheus metrics. Label sets are resolved once per listener and backend at start, so
//! that counting a request is an atomic add, not a label lookup.
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    group: String,
    /// The backend's address, or `-` for responses edgelb made itself (502, 503, 504).
    backend: String,
    /// `2xx`, `5xx`...
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CookieLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    group: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdpLabels {
    listener: String,
    outcome: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Indexed<RequestLabels, Counter>,
    latency: Indexed<ListenerLabels, Histogram>,
    connections: Indexed<ListenerLabels, Gauge>,
    parked: Indexed<ListenerLabels, Gauge>,
    h2_floods: Indexed<FloodLabels, Counter>,
    handshakes: Indexed<HandshakeLabels, Counter>,
    refused: Indexed<RefusedLabels, Counter>,
    proxy_protocol_refused: Indexed<RefusedLabels, Counter>,
    backend_healthy: Indexed<BackendLabels, Gauge>,
    xdp_packets: Indexed<XdpLabels, Gauge<u64, AtomicU64>>,
    blocked_sources: Indexed<ListenerLabels, Gauge<u64, AtomicU64>>,
    syn_cookies_answering: Indexed<ListenerLabels, Gauge>,
    kernel_syncookies: Family<CookieLabels, Gauge<u64, AtomicU64>>,
    xdp_backend_packets: Indexed<BackendLabels, Gauge<u64, AtomicU64>>,
    xdp_backend_bytes: Indexed<BackendLabels, Gauge<u64, AtomicU64>>,
    reloads: Counter,
    reloads_failed: Counter,
    access_log_dropped: Counter,
    log_dropped: Counter,
    /// Requests of series a reload removed while what they count stays configured (a
    /// listener's route to a group, a listener sharing a kept backend): `/status` totals are
    /// since start.
    retired: Mutex<Retired>,
    /// Each configured listener's flag, set once a reload removes it: its connections still
    /// draining must not make its series again.
    listeners: Mutex<HashMap<String, Arc<AtomicBool>>>,
    bgp_peer_established: Family<PeerLabels, Gauge>,
    bgp_announced: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    acme_failures: Family<ListenerLabels, Gauge>,
}

/// One certificate's figures for [`Metrics::set_certificates`].
pub struct CertificateMetric<'a> {
    pub listener: &'a str,
    pub source: &'a str,
    /// Its first name.
    pub name: &'a str,
    pub expires_in_seconds: Option<i64>,
    /// ACME certificates: orders failed in a row.
    pub acme_failures: Option<u32>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    listener: String,
    /// `file` or `acme`.
    source: String,
    /// The certificate's first name.
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FloodLabels {
    listener: String,
    frame: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("edgelb");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by listener, group, backend and status class",
            requests.clone(),
        );
        let requests = Indexed::new(requests);
        let latency = Family::<ListenerLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers",
            latency.clone(),
        );
        let latency = Indexed::new(latency);
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Client connections open now",
            connections.clone(),
        );
        let connections = Indexed::new(connections);
        let parked = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1.1 client connections holding no HTTP state, only the client stream",
            parked.clone(),
        );
        let parked = Indexed::new(parked);
        let h2_floods = Family::<FloodLabels, Counter>::default();
        registry.register(
            "h2_floods",
            "HTTP/2 connections ended with GOAWAY ENHANCE_YOUR_CALM for a control-frame flood, by the frame type sent most",
            h2_floods.clone(),
        );
        let h2_floods = Indexed::new(h2_floods);
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes by result (ok, or the failure reason)",
            handshakes.clone(),
        );
        let handshakes = Indexed::new(handshakes);
        let backend_healthy = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend_healthy",
            "1 when the backend passes its health checks",
            backend_healthy.clone(),
        );
        let backend_healthy = Indexed::new(backend_healthy);
        let xdp_packets = Family::<XdpLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "xdp_packets",
            "Packets the XDP program counted, by listener and outcome (totals since load)",
            xdp_packets.clone(),
        );
        let xdp_packets = Indexed::new(xdp_packets);
        let blocked_sources = Family::<ListenerLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "xdp_blocked_sources",
            "Sources the XDP program blocks now, by listener (--auto-block)",
            blocked_sources.clone(),
        );
        let blocked_sources = Indexed::new(blocked_sources);
        let syn_cookies_answering = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "syn_cookies_answering",
            "1 while the XDP program answers the listener's new connections with SYN cookies (--syn-protect)",
            syn_cookies_answering.clone(),
        );
        let syn_cookies_answering = Indexed::new(syn_cookies_answering);
        let kernel_syncookies = Family::<CookieLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "tcp_syncookies",
            "The kernel's SYN cookie counters in the daemon's network namespace (TcpExt): sent by the kernel, received (valid ACKs: connections made from a cookie, XDP's included), failed (ACKs with a bad cookie)",
            kernel_syncookies.clone(),
        );
        let xdp_backend_packets = Family::<BackendLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "xdp_backend_packets",
            "Frames the XDP program forwarded to a tcp/udp listener's backend (totals since load)",
            xdp_backend_packets.clone(),
        );
        let xdp_backend_packets = Indexed::new(xdp_backend_packets);
        let xdp_backend_bytes = Family::<BackendLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "xdp_backend_bytes",
            "Bytes of those frames as received, before encapsulation",
            xdp_backend_bytes.clone(),
        );
        let xdp_backend_bytes = Indexed::new(xdp_backend_bytes);
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed on accept, by listener and reason (access_control, max_connections)",
            refused.clone(),
        );
        let refused = Indexed::new(refused);
        let proxy_protocol_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "proxy_protocol_refused",
            "Client connections closed for their PROXY protocol header, by listener and reason (untrusted_peer, missing, wrong_version, malformed, too_long, timeout, closed, io)",
            proxy_protocol_refused.clone(),
        );
        let proxy_protocol_refused = Indexed::new(proxy_protocol_refused);
        let reloads = Counter::default();
        registry.register("reloads", "Configuration reloads applied", reloads.clone());
        let reloads_failed = Counter::default();
        registry.register(
            "reloads_failed",
            "Configuration reloads refused (the running configuration stayed); the last error is in /status",
            reloads_failed.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access log lines dropped because their destination did not keep up",
            access_log_dropped.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "log_dropped_lines",
            "edgelb's own log lines dropped because stderr did not keep up",
            log_dropped.clone(),
        );
        registry.register(
            "build",
            "The version of edgelb and the commit it was built from",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("EDGELB_COMMIT")),
            ]),
        );
        let bgp_peer_established = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "bgp_peer_established",
            "1 while the BGP session with the peer is established",
            bgp_peer_established.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each served certificate expires (negative once expired), by listener, source (file or acme) and first name",
            certificate_expiry.clone(),
        );
        let acme_failures = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "acme_order_failures",
            "ACME orders failed in a row for a listener's certificate (0 after a success); the last error is in /status",
            acme_failures.clone(),
        );
        let bgp_announced = Gauge::default();
        registry.register(
            "bgp_announced_routes",
            "Routes (listener addresses) announced over BGP now",
            bgp_announced.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            connections,
            parked,
            h2_floods,
            handshakes,
            refused,
            proxy_protocol_refused,
            backend_healthy,
            xdp_packets,
            blocked_sources,
            syn_cookies_answering,
            kernel_syncookies,
            xdp_backend_packets,
            xdp_backend_bytes,
            reloads,
            reloads_failed,
            access_log_dropped,
            log_dropped,
            retired: Mutex::default(),
            listeners: Mutex::default(),
            bgp_peer_established,
            bgp_announced,
            certificate_expiry,
            acme_failures,
        })
    }

    /// Every certificate's time left, and each ACME certificate's failed orders: replaced
    /// whole, so that certificates a reload removed disappear.
    pub fn set_certificates<'a>(&self, certs: impl IntoIterator<Item = CertificateMetric<'a>>) {
        self.certificate_expiry.clear();
        self.acme_failures.clear();
        for c in certs {
            if let Some(left) = c.expires_in_seconds {
                self.certificate_expiry
                    .get_or_create(&CertificateLabels {
                        listener: c.listener.to_string(),
                        source: c.source.to_string(),
                        name: c.name.to_string(),
                    })
                    .set(left);
            }
            if let Some(n) = c.acme_failures {
                self.acme_failures
                    .get_or_create(&ListenerLabels {
                        listener: c.listener.to_string(),
                    })
                    .set(i64::from(n));
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one listener.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let l = ListenerLabels {
            listener: listener.into(),
        };
        let mut flags = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let flag = flags.entry(listener.to_string()).or_default();
        if flag.load(Ordering::Relaxed) {
            *flag = Arc::default();
        }
        let retired = flag.clone();
        drop(flags);
        ListenerMetrics {
            retired,
            latency: self.latency.get_or_create(&l),
            connections: self.connections.get_or_create(&l),
            parked: self.parked.get_or_create(&l),
            h2_floods: self.h2_floods.clone(),
            handshakes: self.handshakes.clone(),
            refused: self.refused.clone(),
            proxy_protocol_refused: self.proxy_protocol_refused.clone(),
            listener: listener.into(),
        }
    }

    /// Request counters of one listener's traffic to one group, by backend (in the group's
    /// order).
    pub fn requests(&self, listener: &str, group: &str, backends: &[String]) -> RequestCounters {
        let counters = |backend: &str| {
            CLASSES.map(|code| {
                self.requests.get_or_create(&RequestLabels {
                    listener: listener.into(),
                    group: group.into(),
                    backend: backend.into(),
                    code: code.into(),
                })
            })
        };
        RequestCounters {
            by_backend: backends.iter().map(|b| counters(b)).collect(),
            local: counters("-"),
        }
    }

    pub fn set_bgp(&self, view: &crate::bgp::BgpView) {
        for p in &view.peers {
            self.bgp_peer_established
                .get_or_create(&PeerLabels {
                    peer: p.address.clone(),
                })
                .set(i64::from(p.established));
        }
        self.bgp_announced.set(view.announced.len() as i64);
    }

    pub fn set_backend_healthy(&self, group: &str, backend: &str, healthy: bool) {
        self.backend_healthy
            .get_or_create(&BackendLabels {
                group: group.into(),
                backend: backend.into(),
            })
            .set(i64::from(healthy));
    }

    pub fn set_xdp_packets(&self, listener: &str, outcome: &str, total: u64) {
        self.xdp_packets
            .get_or_create(&XdpLabels {
                listener: listener.into(),
                outcome: outcome.into(),
            })
            .set(total);
    }

    pub fn set_blocked_sources(&self, listener: &str, n: u64) {
        self.blocked_sources
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .set(n);
    }

    pub fn set_syn_cookies_answering(&self, listener: &str, on: bool) {
        self.syn_cookies_answering
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .set(i64::from(on));
    }

    /// The kernel's SYN cookie counters (`kind`: sent, received, failed).
    pub fn set_kernel_syncookies(&self, kind: &'static str, total: u64) {
        self.kernel_syncookies
            .get_or_create(&CookieLabels { kind })
            .set(total);
    }

    /// Frames the XDP program forwarded to an L4 backend, summed over CPUs.
    pub fn set_xdp_backend(&self, group: &str, backend: &str, packets: u64, bytes: u64) {
        let labels = BackendLabels {
            group: group.into(),
            backend: backend.into(),
        };
        self.xdp_backend_packets.get_or_create(&labels).set(packets);
        self.xdp_backend_bytes.get_or_create(&labels).set(bytes);
    }

    pub fn reloaded(&self) {
        self.reloads.inc();
    }

    pub fn reload_failed(&self) {
        self.reloads_failed.inc();
    }

    /// Lines dropped since start by the access log and by edgelb's own log (their writers
    /// count them).
    pub fn set_dropped_lines(&self, access_log: u64, log: u64) {
        for (counter, total) in [
            (&self.access_log_dropped, access_log),
            (&self.log_dropped, log),
        ] {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
    }

    /// Client connections open now on `listener`.
    pub fn open_connections(&self, listener: &str) -> i64 {
        self.connections
            .family
            .get(&ListenerLabels {
                listener: listener.into(),
            })
            .map_or(0, |g| g.get())
    }

    /// Requests `listener` answered since start, by status class (1xx to 5xx).
    pub fn listener_requests(&self, listener: &str) -> [u64; 5] {
        let mut classes = self
            .retired()
            .by_listener
            .get(listener)
            .copied()
            .unwrap_or_default();
        self.requests.for_each(|labels, counter| {
            if labels.listener == listener
                && let Some(i) = CLASSES.iter().position(|c| *c == labels.code)
            {
                classes[i] += counter.get();
            }
        });
        classes
    }

    /// Requests `backend` of `group` answered since start, over every listener.
    pub fn backend_requests(&self, group: &str, backend: &str) -> u64 {
        let mut sum = self
            .retired()
            .by_backend
            .get(&(group.to_string(), backend.to_string()))
            .copied()
            .unwrap_or_default();
        self.requests.for_each(|l, c| {
            if l.group == group && l.backend == backend {
                sum += c.get();
            }
        });
        sum
    }

    /// After a reload: removes every series of a listener, a listener's group or a backend
    /// that `now` no longer has, so that a removed backend is not reported healthy (or down)
    /// for the rest of the process's life. Counters of what stays keep counting.
    pub fn retain(&self, now: &Configured) {
        let listener = |l: &str| now.listeners.contains(l);
        let backend = |g: &str, b: &str| now.backends.contains(&(g.to_string(), b.to_string()));
        let removed = self.requests.retain(|l| {
            now.routes.contains(&(l.listener.clone(), l.group.clone()))
                && (l.backend == "-" || backend(&l.group, &l.backend))
        });
        let mut retired = self.retired();
        for (l, counter) in removed {
            let n = counter.get();
            if let Some(class) = CLASSES.iter().position(|c| *c == l.code)
                && listener(&l.listener)
            {
                retired.by_listener.entry(l.listener.clone()).or_default()[class] += n;
            }
            if l.backend != "-" && backend(&l.group, &l.backend) {
                *retired.by_backend.entry((l.group, l.backend)).or_default() += n;
            }
        }
        retired.by_listener.retain(|l, _| listener(l));
        retired.by_backend.retain(|(g, b), _| backend(g, b));
        drop(retired);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, flag| {
                let kept = listener(name);
                if !kept {
                    flag.store(true, Ordering::Relaxed);
                }
                kept
            });
        self.latency.retain(|l| listener(&l.listener));
        self.connections.retain(|l| listener(&l.listener));
        self.parked.retain(|l| listener(&l.listener));
        self.h2_floods.retain(|l| listener(&l.listener));
        self.handshakes.retain(|l| listener(&l.listener));
        self.refused.retain(|l| listener(&l.listener));
        self.proxy_protocol_refused
            .retain(|l| listener(&l.listener));
        self.xdp_packets.retain(|l| listener(&l.listener));
        self.blocked_sources.retain(|l| listener(&l.listener));
        self.syn_cookies_answering.retain(|l| listener(&l.listener));
        self.backend_healthy
            .retain(|l| backend(&l.group, &l.backend));
        let l4 = |l: &BackendLabels| {
            now.l4_backends
                .contains(&(l.group.clone(), l.backend.clone()))
        };
        self.xdp_backend_packets.retain(l4);
        self.xdp_backend_bytes.retain(l4);
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, Retired> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Retired {
    by_listener: HashMap<String, [u64; 5]>,
    by_backend: HashMap<(String, String), u64>,
}

/// What a configuration has, for [`Metrics::retain`].
#[derive(Debug, Default)]
pub struct Configured {
    pub listeners: std::collections::HashSet<String>,
    /// (listener, group) for every group a listener's traffic may go to.
    pub routes: std::collections::HashSet<(String, String)>,
    /// (group, backend address).
    pub backends: std::collections::HashSet<(String, String)>,
    /// (group, backend address) of the groups behind tcp/udp listeners (XDP forwards to them).
    pub l4_backends: std::collections::HashSet<(String, String)>,
}

impl<L: Clone + Hash + Eq> Indexed<L, Counter> {
    /// Counts one in the series of `labels`: per event, so without taking a handle.
    fn inc(&self, labels: &L) {
        match self.family.get(labels) {
            Some(c) => {
                c.inc();
            }
            None => {
                self.get_or_create(labels).inc();
            }
        }
    }
}

/// A family that knows its label sets (prometheus_client's `Family` cannot list them), so
/// that those of something a reload removed can be removed.
struct Indexed<L, M> {
    family: Family<L, M>,
    index: Arc<Mutex<HashMap<L, M>>>,
}

impl<L, M> Clone for Indexed<L, M> {
    fn clone(&self) -> Self {
        Indexed {
            family: self.family.clone(),
            index: self.index.clone(),
        }
    }
}

impl<L: Clone + Hash + Eq, M: Clone> Indexed<L, M> {
    fn new(family: Family<L, M>) -> Self {
        Indexed {
            family,
            index: Arc::default(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<L, M>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The series of `labels` (a handle on it: metric types share their value when cloned).
    fn get_or_create(&self, labels: &L) -> M {
        if let Some(m) = self.family.get(labels) {
            return m.clone();
        }
        let mut index = self.index();
        let m = self.family.get_or_create(labels).clone();
        index.insert(labels.clone(), m.clone());
        m
    }

    fn for_each(&self, mut f: impl FnMut(&L, &M)) {
        for (l, m) in self.index().iter() {
            f(l, m);
        }
    }

    /// Removes the series `keep` refuses; returns them.
    fn retain(&self, keep: impl Fn(&L) -> bool) -> Vec<(L, M)> {
        let mut removed = Vec::new();
        self.index().retain(|l, m| {
            let kept = keep(l);
            if !kept {
                self.family.remove(l);
                removed.push((l.clone(), m.clone()));
            }
            kept
        });
        removed
    }
}

#[derive(Clone)]
pub struct ListenerMetrics {
    /// Set once a reload removed the listener (its series are gone).
    retired: Arc<AtomicBool>,
    latency: Histogram,
    connections: Gauge,
    parked: Gauge,
    h2_floods: Indexed<FloodLabels, Counter>,
    handshakes: Indexed<HandshakeLabels, Counter>,
    refused: Indexed<RefusedLabels, Counter>,
    proxy_protocol_refused: Indexed<RefusedLabels, Counter>,
    listener: String,
}

/// Requests of one listener to one group, by backend and status class.
#[derive(Clone)]
pub struct RequestCounters {
    by_backend: Vec<[Counter; 5]>,
    local: [Counter; 5],
}

impl RequestCounters {
    /// One answered request: `backend` is None for responses edgelb made itself.
    pub fn count(&self, backend: Option<usize>, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        let row = backend
            .and_then(|b| self.by_backend.get(b))
            .unwrap_or(&self.local);
        row[class].inc();
    }
}

impl ListenerMetrics {
    /// One event in the series `labels` makes, unless a reload removed the listener (its
    /// connections still draining must not make its series again).
    fn count<L: Clone + Hash + Eq>(
        &self,
        family: &Indexed<L, Counter>,
        labels: impl FnOnce() -> L,
    ) {
        if !self.retired.load(Ordering::Relaxed) {
            family.inc(&labels());
        }
    }

    /// Time from a request to its response headers.
    pub fn observe(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    pub fn connection_opened(&self) -> GaugeGuard {
        self.connections.inc();
        GaugeGuard(self.connections.clone())
    }

    /// An idle HTTP/1.1 connection parked (holding no HTTP state) until the guard is dropped.
    pub fn connection_parked(&self) -> GaugeGuard {
        self.parked.inc();
        GaugeGuard(self.parked.clone())
    }

    /// An HTTP/2 connection ended for a control-frame flood of mostly `frame`.
    pub fn h2_flood(&self, frame: &str) {
        self.count(&self.h2_floods, || FloodLabels {
            listener: self.listener.clone(),
            frame: frame.into(),
        });
    }

    /// The listener's name, for log lines about it.
    pub fn name(&self) -> &str {
        &self.listener
    }

    /// A connection closed on accept, and why.
    pub fn refused(&self, reason: &str) {
        self.count(&self.refused, || RefusedLabels {
            listener: self.listener.clone(),
            reason: reason.into(),
        });
    }

    /// A connection closed for its PROXY protocol header (or for sending from a peer that may
    /// not send one), and why.
    pub fn proxy_protocol_refused(&self, reason: &str) {
        self.count(&self.proxy_protocol_refused, || RefusedLabels {
            listener: self.listener.clone(),
            reason: reason.into(),
        });
    }

    /// A handshake's result: `ok`, or a short failure reason.
    pub fn handshake(&self, result: &str) {
        self.count(&self.handshakes, || HandshakeLabels {
            listener: self.listener.clone(),
            result: result.into(),
        });
    }
}

/// Counts a connection in a gauge (open, parked) until dropped.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_backend_and_class() {
        let m = Metrics::new();
        let l = m.listener("web");
        let r = m.requests("web", "pool", &["10.0.0.1:80".into()]);
        r.count(Some(0), 200);
        l.observe(Duration::from_millis(3));
        r.count(None, 503);
        l.observe(Duration::from_millis(1));
        l.handshake("ok");
        m.set_backend_healthy("pool", "10.0.0.1:80", true);
        m.set_xdp_packets("web", "dropped_acl", 7);
        let text = m.encode();
        for line in [
            r#"edgelb_requests_total{listener="web",group="pool",backend="10.0.0.1:80",code="2xx"} 1"#,
            r#"edgelb_requests_total{listener="web",group="pool",backend="-",code="5xx"} 1"#,
            r#"edgelb_tls_handshakes_total{listener="web",result="ok"} 1"#,
            r#"edgelb_backend_healthy{group="pool",backend="10.0.0.1:80"} 1"#,
            r#"edgelb_xdp_packets{listener="web",outcome="dropped_acl"} 7"#,
            r#"edgelb_request_duration_seconds_count{listener="web"} 2"#,
            r#"edgelb_reloads_failed_total 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let build = format!(
            r#"edgelb_build_info{{version="{}",commit="{}"}} 1"#,
            env!("CARGO_PKG_VERSION"),
            env!("EDGELB_COMMIT")
        );
        assert!(text.contains(&build), "missing {build} in\n{text}");
        assert_eq!(m.listener_requests("web"), [0, 1, 0, 0, 1]);
        assert_eq!(m.listener_requests("other"), [0; 5]);
        assert_eq!(m.backend_requests("pool", "10.0.0.1:80"), 1);
        let _open = l.connection_opened();
        assert_eq!(m.open_connections("web"), 1);
    }
}
