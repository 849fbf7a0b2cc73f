//! `[[listener.rule]]`: a forwarding rule as a config-file table, the file's form of `--rule`.
use super::ConfigError;
use super::spec::RuleTable;
use crate::rules::{ActionSpec, PathMatch, RuleSpec};

/// The rule of table `n` of the listener at `listener` (`FILE: listener "web"`); `forward`
/// without `group` goes to the listener's `group`.
pub fn spec(t: &RuleTable, n: usize, group: &str, listener: &str) -> Result<RuleSpec, ConfigError> {
    let name = t.name.clone().unwrap_or_else(|| format!("rule-{}", n + 1));
    let at = format!("{listener}: rule {name:?}");
    let missing =
        |key: &'static str, why: &str| ConfigError::missing(key, why).in_file(at.clone(), false);
    let status = || {
        t.status
            .map(|s| s.0)
            .ok_or_else(|| missing("status", "required for this action"))
    };
    let action = match t.action.as_deref() {
        Some("forward") | None if t.group.is_some() || t.action.is_some() => ActionSpec::Forward {
            group: t.group.clone().unwrap_or_else(|| group.to_string()),
        },
        Some("redirect") => ActionSpec::Redirect {
            status: status()?,
            location: t
                .location
                .clone()
                .ok_or_else(|| missing("location", "required for a redirect"))?,
        },
        Some("fixed") => ActionSpec::Fixed {
            status: status()?,
            content_type: t
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain".to_string()),
            body: t.body.clone().unwrap_or_default(),
        },
        Some(other) => {
            return Err(
                ConfigError::new("action", other, "expected forward, redirect or fixed")
                    .in_file(at, false),
            );
        }
        None => {
            return Err(missing(
                "action",
                "required: forward (to group = \"NAME\"), redirect or fixed",
            ));
        }
    };
    let paths = (t.path.iter().cloned().map(PathMatch::Exact))
        .chain(t.path_prefix.iter().cloned().map(PathMatch::Prefix))
        .chain(t.path_regex.iter().cloned().map(PathMatch::Regex))
        .collect();
    let named = |m: &std::collections::BTreeMap<String, super::spec::OneOrMany>| {
        m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
    };
    Ok(RuleSpec {
        name,
        hosts: t.host.clone(),
        paths,
        methods: t.method.clone(),
        headers: named(&t.header),
        query: named(&t.query),
        client_cidrs: t.client.clone(),
        action,
        rate_limit: t.rate_limit_requests.map(|n| n.0),
    })
}
