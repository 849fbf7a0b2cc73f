//! Redirect locations: a template with `{scheme}`, `{host}`, `{path}` and `{query}`.
use super::RequestInfo;
use super::matchers::strip_port;

const ALLOWED: &str = "placeholders are {scheme}, {host}, {path} and {query}";

/// Why a redirect location was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum LocationError {
    #[error("a redirect needs a location")]
    Empty,
    #[error("{0:?} cannot appear in a Location header (visible ASCII only; percent-encode)")]
    NotVisibleAscii(char),
    #[error("unmatched brace; {ALLOWED}")]
    UnmatchedBrace,
    #[error("unknown placeholder {{{0}}}; {ALLOWED}")]
    UnknownPlaceholder(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Scheme,
    Host,
    Path,
    Query,
}

/// A redirect's `Location`, parsed and checked at compile time: literal text (visible ASCII)
/// and the placeholders `{scheme}` (the scheme given to [`LocationTemplate::render`]),
/// `{host}` (the request's host without its port; empty without one), `{path}` (the path as
/// received) and `{query}` (empty, or `?` and the query). For example
/// `https://{host}{path}{query}` sends plain-HTTP requests to HTTPS on the default port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationTemplate {
    source: Box<str>,
    parts: Vec<Part>,
}

impl LocationTemplate {
    /// `Err(problem)` for an empty template, characters a `Location` header cannot carry, or
    /// an unknown or unclosed placeholder.
    pub(super) fn parse(raw: &str) -> Result<LocationTemplate, LocationError> {
        if raw.is_empty() {
            return Err(LocationError::Empty);
        }
        if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(LocationError::NotVisibleAscii(c));
        }
        let mut parts = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            let brace = rest.find(['{', '}']).unwrap_or(rest.len());
            if brace > 0 {
                parts.push(Part::Literal(rest[..brace].into()));
                rest = &rest[brace..];
                continue;
            }
            let Some(end) = rest.strip_prefix('{').and_then(|r| r.find('}')) else {
                return Err(LocationError::UnmatchedBrace);
            };
            let name = &rest[1..=end];
            parts.push(match name {
                "scheme" => Part::Scheme,
                "host" => Part::Host,
                "path" => Part::Path,
                "query" => Part::Query,
                _ => return Err(LocationError::UnknownPlaceholder(name.to_string())),
            });
            rest = &rest[end + 2..];
        }
        Ok(LocationTemplate {
            source: raw.into(),
            parts,
        })
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The location for `req`; `scheme` is what `{scheme}` becomes (`http`/`https`).
    pub fn render(&self, req: &RequestInfo<'_>, scheme: &str) -> String {
        let host = req.host.map_or("", strip_port);
        let query = req.query.filter(|q| !q.is_empty());
        let mut out = String::with_capacity(self.source.len() + host.len() + req.path.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Scheme => out.push_str(scheme),
                Part::Host => out.push_str(host),
                Part::Path => out.push_str(req.path),
                Part::Query => {
                    if let Some(q) = query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
        out
    }
}
