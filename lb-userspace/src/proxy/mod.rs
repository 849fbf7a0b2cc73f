//! The HTTP half of a listener: each request goes to a backend chosen by the group's balancer,
//! over pooled HTTP/1.1 connections; failures are retried on another backend where that is safe.
pub mod body;
pub mod client;
pub mod h1;
pub mod headers;
pub mod private;
pub mod sticky;
pub mod strict;
pub mod tunnel;

use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio_util::either::Either;
use tracing::{debug, warn};

use crate::balance::Balancer;
use crate::config::{GroupConfig, Timeouts, TransferLbIp};
use crate::dataplane::error_chain;
use crate::metrics::RequestCounters;
use crate::refusals::Refused;
use crate::rules::{Action, RequestInfo, RuleSet};
use body::{BoxError, Prefixed, StallTimeout, Stalled, WithGuard};
use client::UpstreamBody;
use h1::OutBody;
use headers::ConnInfo;

pub use body::ProxyBody;

/// A client's request body as the proxy takes it: hyper's for HTTP/1.1 and HTTP/2, the
/// request stream's for HTTP/3.
pub trait RequestBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

/// Who answered a request: the group it went to (None when a rule answered), the backend
/// (None when edgelb answered itself) and the rule that matched, if any (an index into the
/// listener's rules).
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    pub group: Option<usize>,
    pub backend: Option<usize>,
    pub rule: Option<usize>,
}

/// The listener settings that shape each forwarded request.
#[derive(Clone, Copy, Debug)]
pub struct ListenerSettings {
    pub timeouts: Timeouts,
    pub transfer_lb_ip: TransferLbIp,
}

/// Where one listener's requests can go, on one worker: its rules and the groups they (and
/// the default) reach, by position in the configuration's groups.
pub struct Routes {
    /// The listener's name, for log lines.
    pub listener: Arc<str>,
    pub rules: Arc<RuleSet>,
    /// None for groups this listener never sends to.
    pub groups: Vec<Option<RouteTarget>>,
    pub default: usize,
    pub settings: ListenerSettings,
    /// `--rate-limit-requests`, shared by the listener's workers.
    pub rate_limit: Option<Arc<crate::rate_limit::RateLimiter>>,
}

/// One group as a listener uses it: the worker's upstream and this listener's counters.
pub struct RouteTarget {
    pub upstream: Arc<Upstream>,
    pub requests: RequestCounters,
}

impl Routes {
    pub fn target(&self, group: usize) -> Option<&RouteTarget> {
        self.groups.get(group).and_then(Option::as_ref)
    }

    /// Counts a request refused before routing, answered `status` by edgelb itself, against
    /// the default group (it reached no rule).
    pub fn count_refused(&self, status: u16) {
        if let Some(t) = self.target(self.default) {
            t.requests.count(None, status);
        }
    }

    /// Answers one request: by a rule's redirect or fixed response, or by the group the
    /// first matching rule (else the default) names. Counts it for that group.
    ///
    /// Not an `async fn`: the routing happens before anything is awaited, so the returned
    /// future is the forwarding alone. An `async fn` would keep its own copy of the request
    /// (and of its parts) beside the forwarding future's for the whole exchange, and every
    /// request's future, moved and boxed on its way into hyper's task, would be that much
    /// larger to copy.
    pub fn handle<'a, B: RequestBody>(
        &'a self,
        req: Request<B>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = (Response<ProxyBody>, Served)> + Send + 'a {
        match self.route(req, conn) {
            Routed::Forward(target, req, served) => {
                Either::Right(target.forward(req, conn, &self.settings, served))
            }
            Routed::Answered(resp, served) => Either::Left(std::future::ready((*resp, served))),
        }
    }

    /// The strict checks, the rules and the rate limits: where a request goes, or edgelb's
    /// own answer to it.
    fn route<'a, B>(&'a self, req: Request<B>, conn: &ConnInfo) -> Routed<'a, B> {
        let (mut parts, body) = req.into_parts();
        if let Err(strict::Refusal(status, why)) = strict::check_request(&mut parts) {
            let reason = format!("{why} (answered {})", status.as_u16());
            crate::refusals::log(Refused::Request, &self.listener, conn.peer, &reason);
            self.count_refused(status.as_u16());
            return Routed::answered(refusal(status, parts.version), Served::default());
        }
        let req = Request::from_parts(parts, body);
        let (decision, rule) = apply_rules(&self.rules, &req, conn);
        // The listener's limit, then the matched rule's: a request counts against both.
        let limits = [
            self.rate_limit.as_deref(),
            rule.and_then(|r| self.rules.limiter(r)),
        ];
        if limits
            .into_iter()
            .flatten()
            .any(|limit| !limit.admit(conn.peer.ip()))
        {
            if let Some(t) = self.target(self.default) {
                t.requests
                    .count(None, StatusCode::TOO_MANY_REQUESTS.as_u16());
            }
            crate::refusals::log(
                Refused::Request,
                &self.listener,
                conn.peer,
                &"over the rate limit (answered 429)",
            );
            let served = Served {
                rule,
                ..Served::default()
            };
            return Routed::answered(too_many_requests(), served);
        }
        let group = match decision {
            Decision::Answer(answer) => {
                if let Some(t) = self.target(self.default) {
                    t.requests.count(None, answer.status().as_u16());
                }
                let served = Served {
                    group: None,
                    backend: None,
                    rule,
                };
                return Routed::Answered(answer, served);
            }
            Decision::Forward(group) => group.unwrap_or(self.default),
        };
        let Some(target) = self.target(group) else {
            // Config compiles every forward target into `groups`; this is a bug, not a 404.
            warn!(
                group,
                "rule forwards to a group this listener does not know"
            );
            return Routed::answered(
                error_page(StatusCode::INTERNAL_SERVER_ERROR),
                Served::default(),
            );
        };
        let served = Served {
            group: Some(group),
            backend: None,
            rule,
        };
        Routed::Forward(target, req, served)
    }
}

/// Where [`Routes::route`] sends a request. Returned once and taken apart at once: the large
/// variant is the common one, and boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Routed<'a, B> {
    /// To this group's backends.
    Forward(&'a RouteTarget, Request<B>, Served),
    /// Nowhere: edgelb answers (boxed: the forwarded request is the common case).
    Answered(Box<Response<ProxyBody>>, Served),
}

impl<B> Routed<'_, B> {
    fn answered(resp: Response<ProxyBody>, served: Served) -> Self {
        Routed::Answered(Box::new(resp), served)
    }
}

/// Request bodies up to this size are read whole before the first attempt, so that they can
/// be sent again to another backend; larger ones stream and get a single attempt.
const REPLAYABLE_BODY_LIMIT: u64 = 64 * 1024;

/// A backend group with its balancer and one worker's connection pool to its backends.
pub struct Upstream {
    /// Keys this upstream's connections among a client connection's private ones.
    id: private::UpstreamId,
    group: GroupConfig,
    balancer: Arc<Balancer>,
    sticky: Option<Arc<sticky::Sticky>>,
    client: h1::Client,
}

/// A request body as the retry loop sees it.
enum Outgoing {
    /// Empty or read whole: can be sent any number of times.
    Replayable(Bytes),
    /// Streaming: can be sent once.
    Stream(Option<UpstreamBody>),
}

impl Outgoing {
    /// The body for the next attempt; None when a stream was already sent.
    fn take(&mut self, declared: Option<u64>) -> Option<OutBody> {
        match self {
            Outgoing::Replayable(b) => Some(OutBody::Full(b.clone())),
            Outgoing::Stream(s) => s.take().map(|s| OutBody::Stream(s, declared)),
        }
    }
}

impl Upstream {
    /// `balancer` is shared by every worker's upstream; the connection pool is this one's own.
    pub fn new(
        group: GroupConfig,
        balancer: Arc<Balancer>,
        sticky: Option<Arc<sticky::Sticky>>,
    ) -> Result<Self, rustls::Error> {
        Ok(Upstream {
            id: private::UpstreamId::next(),
            sticky,
            balancer,
            client: client::backend_client(&group)?,
            group,
        })
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The client's answer from backend `pick`'s response, and the backend to count it for
    /// (none when the response is refused). `upgrade` is the client's side of an upgrade it
    /// asked for.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        mut resp: Response<h1::ResponseBody>,
        pick: crate::balance::Pick,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        pinned: Option<usize>,
        now: Option<SystemTime>,
        conn: &ConnInfo,
        settings: &ListenerSettings,
    ) -> (Response<ProxyBody>, Option<usize>) {
        if resp.headers().contains_key(TRANSFER_ENCODING)
            && resp.headers().contains_key(CONTENT_LENGTH)
        {
            // RFC 9112 6.3: a sign of response splitting. The connection may hold bytes
            // framed either way: answer nothing of it, and drop it with the unread body (only
            // a body read to its end returns a connection).
            let backend = self.group.backends[pick.index].addr;
            warn!(backend = %backend, group = self.group.name, "backend response has both Transfer-Encoding and Content-Length: 502");
            return (error_page(StatusCode::BAD_GATEWAY), None);
        }
        let tunnel = if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = upgrade
            && let Some(backend_side) = resp.body_mut().take_upgraded()
        {
            Some((client_side, backend_side))
        } else {
            None
        };
        let keep_upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
        let index = pick.index;
        if let (Some(s), Some(now), Some(key)) =
            (self.sticky.as_deref(), now, self.balancer.key(index))
        {
            let https = conn.scheme == "https";
            s.on_response(resp.headers_mut(), key, pinned == Some(index), https, now);
        }
        // A body that stalls longer than the response timeout is cut (the client sees its
        // connection close before the end of the body).
        let stall = settings.timeouts.response;
        if let Some((client_side, backend_side)) = tunnel {
            // Run by the client connection's task once hyper lets it go, holding the pick: a
            // backend's open tunnels count for least connections.
            let timeouts = settings.timeouts;
            let idle = if timeouts.idle.is_zero() {
                timeouts.response
            } else {
                timeouts.idle
            };
            conn.tunnel.open(client_side, backend_side, idle, pick);
            return (
                resp.map(|b| ProxyBody::other(StallTimeout::new(b, stall))),
                Some(index),
            );
        }
        let resp =
            resp.map(|b| ProxyBody::Backend(WithGuard::new(StallTimeout::new(b, stall), pick)));
        (resp, Some(index))
    }
}

impl RouteTarget {
    /// Forwards one request and returns the backend's response, or an error page: 503 when no
    /// backend can take it, 502 when backends failed, 504 when they did not answer in time.
    /// Counts it, and fills in `served` which backend answered.
    ///
    /// What needs no waiting is done before the future is made; the future uses what it holds
    /// in place (see [`Routes::handle`] for why it is not an `async fn`).
    fn forward<'a, B: RequestBody>(
        &'a self,
        mut req: Request<B>,
        conn: &'a ConnInfo,
        settings: &'a ListenerSettings,
        mut served: Served,
    ) -> impl Future<Output = (Response<ProxyBody>, Served)> + Send + 'a {
        let up = &*self.upstream;
        let mut upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let version = parts.version;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
        headers::add_client_headers(&mut parts.headers, conn, settings.transfer_lb_ip);
        // The length sent is the one of the body sent, in canonical form (`005` becomes `5`):
        // the client writes it from the body read whole, or from the length parsed.
        let declared = parts
            .headers
            .remove(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let client_ip = conn.peer.ip().to_canonical();
        let sticky = up.sticky.as_deref();
        // Cookie expiries need the wall clock; groups without stickiness don't read it.
        let now = sticky.map(|_| SystemTime::now());
        let pinned = sticky
            .zip(now)
            .and_then(|(s, now)| s.pinned(&parts.headers, now))
            .and_then(|backend| up.balancer.index_of(&backend));
        // With `--backend-proxy-protocol`, connections start with this client's header and
        // serve this client connection only.
        let proxy_header = up
            .group
            .proxy_protocol
            .map(|version| private::header(version, conn));
        let private_pool = proxy_header.as_ref().map(|_| conn.private.pool(up.id));
        let mut body = (!body.is_end_stream()).then_some(body);
        async move {
            let private = proxy_header
                .as_deref()
                .zip(private_pool.as_ref())
                .map(|(header, pool)| h1::Private { pool, header });
            // `strict::check_request` made Host the :authority of HTTP/2 requests (and of
            // absolute-form HTTP/1.1 targets): HTTP/1.1 backends get it as Host.
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let (resp, backend) = 'answer: {
                // Boxed: only requests with a body need the reader's state.
                let mut outgoing = match body.take() {
                    None => Outgoing::Replayable(Bytes::new()),
                    Some(body) => {
                        match Box::pin(read_body(body, declared, settings.timeouts.request)).await {
                            Ok(o) => o,
                            Err(status) => break 'answer (refusal(status, version), None),
                        }
                    }
                };
                // Inline: nearly every request is tried once, and this was an allocation per
                // request.
                let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
                let mut status = StatusCode::SERVICE_UNAVAILABLE;
                // A backend to resend to once, on another connection, after a connection of
                // the pool closed under the request (the backend's keep-alive timeout racing
                // our reuse).
                let mut resend_to: Option<usize> = None;
                let mut resent = false;
                loop {
                    // A pinned client goes to its backend while that one can take it;
                    // otherwise it is balanced like anyone else, and re-pinned to where it
                    // lands.
                    let pick = resend_to
                        .take()
                        .and_then(|i| up.balancer.pick_backend(i, &tried))
                        .or_else(|| pinned.and_then(|i| up.balancer.pick_backend(i, &tried)))
                        .or_else(|| up.balancer.pick(client_ip, &tried));
                    let Some(pick) = pick else {
                        break 'answer (error_page(status), None);
                    };
                    tried.push(pick.index);
                    let backend = up.group.backends[pick.index].addr;
                    let Some(body) = outgoing.take(declared) else {
                        break 'answer (error_page(status), None);
                    };
                    let send = up.client.send(
                        pick.index,
                        backend,
                        private,
                        &parts.method,
                        path,
                        &parts.headers,
                        body,
                        settings.timeouts.response,
                    );
                    let retry_safe = matches!(outgoing, Outgoing::Replayable(_));
                    match send.await {
                        Ok(resp) => {
                            break 'answer up.answer(
                                resp,
                                pick,
                                upgrade.take(),
                                pinned,
                                now,
                                conn,
                                settings,
                            );
                        }
                        Err(h1::Error::RequestBody(e)) => {
                            // The client's body failed while it streamed to the backend: the
                            // client's doing, answered as a body read whole would be (no
                            // retry: it is gone).
                            break 'answer (refusal(client_body_failed(&e), version), None);
                        }
                        Err(h1::Error::TimedOut(what)) => {
                            let again = retry_safe && idempotent;
                            warn!(backend = %backend, group = up.group.name, timeout = ?settings.timeouts.response, retry = again, "backend did not respond in time: {what}");
                            status = StatusCode::GATEWAY_TIMEOUT;
                            if !again {
                                break 'answer (error_page(status), None);
                            }
                        }
                        Err(e) => {
                            // A refused connection never saw the request: any method may go
                            // elsewhere.
                            let again = retry_safe && (e.is_connect() || idempotent);
                            let resend = again && !resent && e.is_lost();
                            warn!(backend = %backend, group = up.group.name, error = %error_chain(&e), retry = again, same_backend = resend, "backend request failed");
                            status = StatusCode::BAD_GATEWAY;
                            if !again {
                                break 'answer (error_page(status), None);
                            }
                            if resend {
                                resent = true;
                                tried.pop();
                                resend_to = Some(pick.index);
                            }
                        }
                    }
                }
            };
            self.requests.count(backend, resp.status().as_u16());
            served.backend = backend;
            (resp, served)
        }
    }
}

/// The answer to a request whose body the client failed to send: 408 when it stalled, 400
/// otherwise (a broken framing, a connection gone).
fn client_body_failed(e: &BoxError) -> StatusCode {
    debug!(error = %e, "reading the request body failed");
    if e.is::<Stalled>() {
        StatusCode::REQUEST_TIMEOUT
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// Bodies up to [`REPLAYABLE_BODY_LIMIT`] (declared or chunked) are read whole, with the
/// request timeout as the longest stall, so that a retry can resend them and so that a body
/// whose framing is broken is refused before anything reaches a backend; others stream.
async fn read_body<B: RequestBody>(
    body: B,
    length: Option<u64>,
    request_timeout: std::time::Duration,
) -> Result<Outgoing, StatusCode> {
    let mut body = StallTimeout::request(body, request_timeout);
    if length.is_some_and(|n| n > REPLAYABLE_BODY_LIMIT) {
        return Ok(Outgoing::Stream(Some(body.boxed())));
    }
    let mut read = Vec::new();
    loop {
        match body.frame().await {
            None => return Ok(Outgoing::Replayable(Bytes::from(read))),
            Some(Err(e)) => return Err(client_body_failed(&e)),
            // Trailers are dropped: backends are not told to expect any (`Trailer` is
            // hop-by-hop).
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
                if read.len() as u64 > REPLAYABLE_BODY_LIMIT {
                    let rest = Prefixed::new(Bytes::from(read), body);
                    return Ok(Outgoing::Stream(Some(rest.boxed())));
                }
            }
        }
    }
}

/// What the rules say about a request.
enum Decision {
    /// A redirect or fixed response (boxed: rare, and the common decision stays small).
    Answer(Box<Response<ProxyBody>>),
    /// Forward to this group (by position in the configuration), or to the listener's
    /// default group.
    Forward(Option<usize>),
}

/// The first matching rule's decision, and which rule matched.
fn apply_rules<B>(rules: &RuleSet, req: &Request<B>, conn: &ConnInfo) -> (Decision, Option<usize>) {
    if rules.is_empty() {
        return (Decision::Forward(None), None);
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let info = RequestInfo {
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
        client: conn.peer.ip().to_canonical(),
    };
    let Some(matched) = rules.evaluate(&info) else {
        return (Decision::Forward(None), None);
    };
    debug!(rule = matched.name, "rule matched");
    let answer = match matched.action {
        Action::Forward { index, .. } => Decision::Forward(Some(*index)),
        Action::Redirect { status, location } => {
            let mut resp = error_page(*status);
            if let Ok(v) = HeaderValue::from_str(&location.render(&info, conn.scheme)) {
                resp.headers_mut().insert(hyper::header::LOCATION, v);
            }
            Decision::Answer(Box::new(resp))
        }
        Action::Fixed {
            status,
            content_type,
            body,
        } => {
            let mut resp = Response::new(ProxyBody::full(body.clone()));
            *resp.status_mut() = *status;
            resp.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, content_type.clone());
            Decision::Answer(Box::new(resp))
        }
    };
    (answer, Some(matched.index))
}

/// An error page for a request edgelb refuses; HTTP/1 connections are closed after it, since
/// what follows on them may not be where this request ends.
pub fn refusal(status: StatusCode, version: Version) -> Response<ProxyBody> {
    let mut resp = error_page(status);
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 429 for a client over `--rate-limit-requests` or a rule's limit, with when to come back.
fn too_many_requests() -> Response<ProxyBody> {
    let mut resp = error_page(StatusCode::TOO_MANY_REQUESTS);
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from(crate::rate_limit::RETRY_AFTER_SECS),
    );
    resp
}

pub fn error_page(status: StatusCode) -> Response<ProxyBody> {
    let body = format!("{status}\n");
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}
