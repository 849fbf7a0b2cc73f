//! The HTTP half of a listener: each request from a client goes to the next backend of the
//! group, over pooled HTTP/1.1 connections.
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use crate::balance::wrr::SmoothWrr;
use crate::config::GroupConfig;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A backend group with its balancer and connection pool.
pub struct Upstream {
    group: GroupConfig,
    balancer: SmoothWrr,
    client: Client<HttpConnector, Incoming>,
}

impl Upstream {
    pub fn new(group: GroupConfig) -> Self {
        let weights: Vec<u8> = group.backends.iter().map(|b| b.weight).collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Upstream {
            balancer: SmoothWrr::new(&weights),
            group,
            client,
        }
    }

    /// Forwards one request and returns the backend's response, or an error page.
    pub async fn forward(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        _client: SocketAddr,
    ) -> Response<ProxyBody> {
        let Some(index) = self.balancer.pick() else {
            return error_page(StatusCode::SERVICE_UNAVAILABLE);
        };
        let backend = self.group.backends[index].addr;
        // HTTP/2 clients carry the host in :authority; HTTP/1.1 backends need it as Host.
        if !req.headers().contains_key(HOST)
            && let Some(authority) = req.uri().authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(HOST, value);
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(backend.to_string())
            .path_and_query(path)
            .build()
        else {
            return error_page(StatusCode::BAD_REQUEST);
        };
        *req.uri_mut() = uri;
        *req.version_mut() = hyper::Version::HTTP_11;
        match self.client.request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => {
                warn!(backend = %backend, group = self.group.name, error = %crate::dataplane::error_chain(&e), "backend request failed");
                error_page(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

pub fn error_page(status: StatusCode) -> Response<ProxyBody> {
    let body = format!("{status}\n");
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}
